//! `service`: a millstream service shaped for deployment (see `examples/deploy/`): its backend
//! from the environment, the backend's password from a mounted file, health probes over HTTP,
//! and a graceful stop on SIGTERM (or ctrl-c) within the time the supervisor allows.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `PUBSUB_URL` | the backend (`millstream::connect`'s URLs) | `memory://` |
//! | `PUBSUB_PASSWORD_FILE` | a file holding the backend's password (a Kubernetes secret, a systemd credential), put into the URL | none |
//! | `HEALTH_ADDR` | where `/livez` and `/readyz` are served | `0.0.0.0:8080` |
//! | `SHUTDOWN_TIMEOUT_SECS` | how long in-flight messages may take to finish on a stop | `20` |
//!
//! ```text
//! PUBSUB_URL=memory:// HEALTH_ADDR=127.0.0.1:8080 cargo run -p millstream-examples --bin service
//! ```

use std::time::Duration;

use millstream::prelude::*;
use millstream::RouterConfig;
use tokio::net::TcpListener;

#[derive(Serialize, Deserialize)]
#[millstream::topic("service.pings")]
struct Ping {
    seq: u64,
}

#[millstream::handler]
async fn pong(ping: Ping) {
    tracing::debug!(seq = ping.seq, "ping");
}

/// The backend URL with the password from `PUBSUB_PASSWORD_FILE` put into its user-info.
fn pubsub_url() -> Result<String> {
    let url = std::env::var("PUBSUB_URL").unwrap_or_else(|_| "memory://".to_owned());
    let Ok(path) = std::env::var("PUBSUB_PASSWORD_FILE") else { return Ok(url) };
    let password = std::fs::read_to_string(&path)
        .map_err(|error| Error::msg(format!("reading PUBSUB_PASSWORD_FILE {path}: {error}")))?;
    let password = password.trim_end_matches(['\n', '\r']);
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::msg("PUBSUB_URL needs a user (scheme://user@host) to take a password"))?;
    let (user, host) = rest
        .split_once('@')
        .ok_or_else(|| Error::msg("PUBSUB_URL needs a user (scheme://user@host) to take a password"))?;
    let user = user.split(':').next().unwrap_or(user);
    Ok(format!("{scheme}://{user}:{}@{host}", percent_encode(password)))
}

/// Percent-encodes what a URL's user-info cannot hold as it is.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Resolves on SIGTERM (what Kubernetes and systemd send) or ctrl-c.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let health_addr = std::env::var("HEALTH_ADDR").unwrap_or_else(|_| "0.0.0.0:8080".to_owned());
    let shutdown = std::env::var("SHUTDOWN_TIMEOUT_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(Duration::from_secs(20), Duration::from_secs);

    let router = App::from_registry()
        .config(RouterConfig::default().close_timeout(shutdown))
        .connect(&pubsub_url()?)
        .await?
        .build()?;
    // Probes first: `/livez` answers while the handlers subscribe, `/readyz` once they all have.
    let listener = TcpListener::bind(&health_addr).await.map_err(Error::from)?;
    let addr = listener.local_addr().map_err(Error::from)?;
    tokio::spawn(millstream_examples::serve_health(listener, router.clone(), |_: &str| None));
    tracing::info!(%addr, "serving /livez and /readyz");
    router.start().await?;
    tracing::info!("running; SIGTERM or ctrl-c stops");

    stop_signal().await;
    tracing::info!(timeout = ?shutdown, "stopping: intake stopped, finishing in-flight messages");
    router.close().await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_file_goes_into_the_url() {
        let file = std::env::temp_dir().join(format!("millstream-service-pw-{}", std::process::id()));
        std::fs::write(&file, "p@ss:w/rd\n").unwrap();
        std::env::set_var("PUBSUB_URL", "amqp://orders@rabbit:5672/%2f");
        std::env::set_var("PUBSUB_PASSWORD_FILE", &file);
        assert_eq!(pubsub_url().unwrap(), "amqp://orders:p%40ss%3Aw%2Frd@rabbit:5672/%2f");
        std::env::set_var("PUBSUB_URL", "memory://");
        assert!(pubsub_url().unwrap_err().to_string().contains("needs a user"));
        std::env::remove_var("PUBSUB_PASSWORD_FILE");
        assert_eq!(pubsub_url().unwrap(), "memory://");
        let _ = std::fs::remove_file(file);
    }
}
