//! mqtt-bench: the MQTT backend beside raw rumqttc (its v5 client), QoS 1, in one run.
//!
//! ```text
//! cargo run --release -p millstream-bench --features mqtt --bin mqtt-bench -- [MESSAGES] [RUNS]
//! ```
//!
//! Starts a private Mosquitto (`/usr/sbin/mosquitto`, a free port, no limit on queued messages,
//! no persistence) and stops it at the end. Both sides do the same work with the same settings
//! (manual acks, receive maximum 100, 1 MiB + 64 KiB packets, TCP_NODELAY, the same ~100-byte
//! payload; the broker also sets `set_tcp_nodelay`):
//!
//! - **publish**: batches of 100, each batch sent and then every PUBACK awaited (millstream:
//!   `publish_batch`; raw: 100 `publish` calls, then the event loop's PUBACK events counted);
//!   one message at a time awaited as well (`publish`, the router's way; raw: one `publish`, then
//!   its PUBACK).
//! - **consume + ack**: the messages wait in a group's session (a shared subscription with a
//!   persistent session, created beforehand, filled by a raw publisher while it is offline);
//!   the clock runs from the subscribe that resumes it to the last ack (millstream: a group
//!   subscription, `delivery.ack()` for each; raw: the event loop task hands each publish to a
//!   consumer task, which calls `client.ack`).
//!
//! Each figure is the median of RUNS runs (default 3); MESSAGES defaults to 100 000.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use millstream::pubsub::mqtt::{MqttConfig, MqttPubSub};
use millstream::{Message, Publisher, SubscribeOptions, Subscriber};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

const PAYLOAD: &[u8] =
    br#"{"id":123456,"sku":"ABC-123","qty":3,"note":"benchmark message, about 100 bytes"}"#;
const BATCH: usize = 100;
const RECEIVE_MAXIMUM: u16 = 100;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// millstream's errors as boxed standard errors.
trait Std<T> {
    fn std(self) -> Result<T, BoxError>;
}

impl<T> Std<T> for millstream::Result<T> {
    fn std(self) -> Result<T, BoxError> {
        self.map_err(|error| error.into_std())
    }
}

struct Broker {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Broker {
    fn start() -> Result<Broker, BoxError> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("mqtt-bench-{port}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n\
                 max_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\nlog_dest none\n"
            ),
        )?;
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("mosquitto did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker { child, port, dir })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}", nanos % 1_000_000_000_000)
}

fn raw_options(port: u16, client_id: &str, clean_start: bool) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_start(clean_start)
        .set_manual_acks(true)
        .set_max_packet_size(Some(1024 * 1024 + 64 * 1024))
        .set_receive_maximum(Some(RECEIVE_MAXIMUM));
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if !clean_start {
        options.set_session_expiry_interval(Some(3600));
    }
    options
}

/// A raw client whose event loop task reports PUBACKs and hands incoming publishes over.
struct Raw {
    client: AsyncClient,
    acked: tokio::sync::mpsc::UnboundedReceiver<()>,
    incoming: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn connect(options: MqttOptions, filter: Option<String>) -> Result<Raw, BoxError> {
        let (client, eventloop) = AsyncClient::new(options, usize::from(RECEIVE_MAXIMUM) * 2 + 64);
        let (ack_tx, acked) = tokio::sync::mpsc::unbounded_channel();
        let (in_tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(Self::run(eventloop, client.clone(), filter, ack_tx, in_tx, ready_tx));
        ready.await.map_err(|_| "raw client did not connect")?;
        Ok(Raw { client, acked, incoming, task })
    }

    async fn run(
        mut eventloop: EventLoop,
        client: AsyncClient,
        filter: Option<String>,
        acked: tokio::sync::mpsc::UnboundedSender<()>,
        incoming: tokio::sync::mpsc::UnboundedSender<rumqttc::v5::mqttbytes::v5::Publish>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => match &filter {
                    Some(filter) => {
                        let _ = client.try_subscribe_many([Filter::new(filter.clone(), QoS::AtLeastOnce)]);
                    }
                    None => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                },
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = acked.send(());
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = incoming.send(publish);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Raw: batches of 100 publishes, each batch's PUBACKs awaited; then one at a time.
async fn raw_publish(port: u16, topic: &str, messages: usize) -> Result<(f64, f64), BoxError> {
    let mut raw = Raw::connect(raw_options(port, &unique("raw-pub"), true), None).await?;
    let started = Instant::now();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        for _ in 0..n {
            raw.client.publish(topic, QoS::AtLeastOnce, false, PAYLOAD).await?;
        }
        for _ in 0..n {
            raw.acked.recv().await.ok_or("raw publisher stopped")?;
        }
        left -= n;
    }
    let batched = rate(messages, started.elapsed());
    let single = messages / 10;
    let started = Instant::now();
    for _ in 0..single {
        raw.client.publish(topic, QoS::AtLeastOnce, false, PAYLOAD).await?;
        raw.acked.recv().await.ok_or("raw publisher stopped")?;
    }
    let one_by_one = rate(single, started.elapsed());
    raw.close().await;
    Ok((batched, one_by_one))
}

async fn millstream_publish(
    pubsub: &MqttPubSub,
    topic: &str,
    messages: usize,
) -> Result<(f64, f64), BoxError> {
    let started = Instant::now();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        pubsub.publish_batch(topic, (0..n).map(|_| Message::new(PAYLOAD)).collect()).await.std()?;
        left -= n;
    }
    let batched = rate(messages, started.elapsed());
    let single = messages / 10;
    let started = Instant::now();
    for _ in 0..single {
        pubsub.publish(topic, Message::new(PAYLOAD)).await.std()?;
    }
    Ok((batched, rate(single, started.elapsed())))
}

/// Fills a group's offline session with `messages` (raw publisher, batches awaited).
async fn fill(port: u16, topic: &str, messages: usize, millstream_format: bool) -> Result<(), BoxError> {
    if millstream_format {
        let pubsub =
            MqttPubSub::connect(MqttConfig::new(unique("fill")).host("127.0.0.1", port)).await.std()?;
        let mut left = messages;
        while left > 0 {
            let n = left.min(BATCH);
            pubsub.publish_batch(topic, (0..n).map(|_| Message::new(PAYLOAD)).collect()).await.std()?;
            left -= n;
        }
        Publisher::close(&pubsub).await.std()?;
        return Ok(());
    }
    raw_publish_only(port, topic, messages).await
}

async fn raw_publish_only(port: u16, topic: &str, messages: usize) -> Result<(), BoxError> {
    let mut raw = Raw::connect(raw_options(port, &unique("raw-fill"), true), None).await?;
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        for _ in 0..n {
            raw.client.publish(topic, QoS::AtLeastOnce, false, PAYLOAD).await?;
        }
        for _ in 0..n {
            raw.acked.recv().await.ok_or("raw publisher stopped")?;
        }
        left -= n;
    }
    raw.close().await;
    Ok(())
}

async fn raw_consume(port: u16, topic: &str, messages: usize) -> Result<f64, BoxError> {
    let client_id = unique("raw-sub");
    let filter = format!("$share/bench/{topic}");
    // Create the session and its subscription, then leave.
    Raw::connect(raw_options(port, &client_id, false), Some(filter.clone())).await?.close().await;
    raw_publish_only(port, topic, messages).await?;
    let started = Instant::now();
    let mut raw = Raw::connect(raw_options(port, &client_id, false), Some(filter)).await?;
    for _ in 0..messages {
        let publish = raw.incoming.recv().await.ok_or("raw consumer stopped")?;
        raw.client.ack(&publish).await?;
    }
    let consumed = rate(messages, started.elapsed());
    raw.close().await;
    Ok(consumed)
}

async fn millstream_consume(port: u16, topic: &str, messages: usize) -> Result<f64, BoxError> {
    let config = MqttConfig::new(unique("bench")).host("127.0.0.1", port);
    let pubsub = MqttPubSub::connect(config.clone()).await.std()?;
    drop(pubsub.subscribe(topic, SubscribeOptions::group("bench")).await.std()?);
    Subscriber::close(&pubsub).await.std()?;
    Publisher::close(&pubsub).await.std()?;
    fill(port, topic, messages, true).await?;
    let pubsub = MqttPubSub::connect(config).await.std()?;
    let started = Instant::now();
    let mut sub = pubsub.subscribe(topic, SubscribeOptions::group("bench")).await.std()?;
    for _ in 0..messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.std()?;
        delivery.ack().await.std()?;
    }
    let consumed = rate(messages, started.elapsed());
    drop(sub);
    Subscriber::close(&pubsub).await.std()?;
    Publisher::close(&pubsub).await.std()?;
    Ok(consumed)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let broker = Broker::start()?;
    let port = broker.port;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let rows = runtime.block_on(async move {
        let mut figures: Vec<Vec<f64>> = vec![Vec::new(); 6];
        for run in 0..runs {
            let topic = unique("bench/raw");
            let (raw_batched, raw_single) = raw_publish(port, &topic, messages).await?;
            let pubsub = MqttPubSub::connect(MqttConfig::new(unique("pub")).host("127.0.0.1", port)).await.std()?;
            let (ms_batched, ms_single) = millstream_publish(&pubsub, &unique("bench/ms"), messages).await?;
            Publisher::close(&pubsub).await.std()?;
            let raw_consumed = raw_consume(port, &unique("bench/rawc"), messages).await?;
            let ms_consumed = millstream_consume(port, &unique("bench/msc"), messages).await?;
            eprintln!(
                "run {run}: publish batched {ms_batched:.0} vs raw {raw_batched:.0}; one by one {ms_single:.0} vs \
                 {raw_single:.0}; consume+ack {ms_consumed:.0} vs {raw_consumed:.0}"
            );
            for (i, value) in [ms_batched, raw_batched, ms_single, raw_single, ms_consumed, raw_consumed].into_iter().enumerate() {
                figures[i].push(value);
            }
        }
        Ok::<_, BoxError>(figures.into_iter().map(median).collect::<Vec<f64>>())
    })?;
    println!(
        "{messages} messages of {} bytes, QoS 1, Mosquitto {}, median of {runs} runs\n",
        PAYLOAD.len(),
        mosquitto_version()
    );
    println!("| scenario | millstream msg/s | raw rumqttc msg/s | ratio |\n|---|---:|---:|---:|");
    for (name, ms, raw) in [
        ("publish, batches of 100 (each batch's PUBACKs awaited)", rows[0], rows[1]),
        ("publish, one at a time (PUBACK awaited; 1/10 of the messages)", rows[2], rows[3]),
        ("consume + ack (a group's resumed session)", rows[4], rows[5]),
    ] {
        println!("| {name} | {ms:.0} | {raw:.0} | {:.2} |", ms / raw);
    }
    drop(broker);
    Ok(())
}

fn mosquitto_version() -> String {
    Command::new("/usr/sbin/mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.replace("mosquitto version ", ""))
        })
        .unwrap_or_else(|| "?".to_owned())
}
