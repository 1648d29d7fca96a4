//! What the examples share: a few lines of plain tokio serving a router's health (and, for the
//! `observability` example, its metrics) over HTTP, so that they need no web framework; in a
//! real service mount the same handlers in axum, actix or hyper.

use millstream::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 response that closes the connection.
pub fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `/livez` (the router runs or drains), `/readyz` (every subscription is up, per
/// handler) and whatever `extra` answers for other paths (`None`: 404).
pub async fn serve_health<F>(listener: TcpListener, router: Router, extra: F)
where
    F: Fn(&str) -> Option<String> + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (router, extra) = (router.clone(), extra.clone());
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let line = String::from_utf8_lossy(&request[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let health = router.health();
            let reply = match path {
                "/livez" if health.live => response("200 OK", "text/plain", "live\n"),
                "/livez" => response("503 Service Unavailable", "text/plain", "not live\n"),
                "/readyz" => {
                    let body: String = health
                        .handlers
                        .iter()
                        .map(|(name, up)| format!("{name}: {}\n", if *up { "up" } else { "down" }))
                        .collect();
                    let status = if health.ready { "200 OK" } else { "503 Service Unavailable" };
                    response(status, "text/plain", &body)
                }
                other => {
                    extra(other).unwrap_or_else(|| response("404 Not Found", "text/plain", "not found\n"))
                }
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

/// `GET path` from `addr`: the whole response.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}
