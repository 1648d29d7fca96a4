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
//! The raw side runs twice: bare (payload only) and with the id as a user property, which is
//! what millstream sends besides the payload (its metadata is empty here), so the second ratio
//! is millstream's own cost and the first includes the broker's work on the property.
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

/// One measured phase: messages per second, and this process's CPU time (user + system, all
/// threads) per message in microseconds: the client's own cost, less disturbed by a busy machine
/// than wall time (the broker is another process).
#[derive(Clone, Copy, Debug, Default)]
struct Figure {
    rate: f64,
    cpu_us: f64,
}

/// This process's CPU time so far (`/proc/self/stat`, clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

struct Clock {
    wall: Instant,
    cpu: Duration,
}

impl Clock {
    fn start() -> Clock {
        Clock { wall: Instant::now(), cpu: cpu_time() }
    }

    fn stop(&self, messages: usize) -> Figure {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let cpu = (cpu_time() - self.cpu).as_secs_f64();
        Figure { rate: messages as f64 / wall, cpu_us: cpu * 1e6 / messages as f64 }
    }
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

/// One raw QoS 1 publish; `with_id` adds what millstream sends besides the payload (the id as a
/// user property), so the broker does the same work.
async fn raw_send(client: &AsyncClient, topic: &str, with_id: bool) -> Result<(), BoxError> {
    if with_id {
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            user_properties: vec![("millstream-id".to_owned(), millstream::MessageId::new().to_string())],
            ..Default::default()
        };
        client.publish_with_properties(topic, QoS::AtLeastOnce, false, PAYLOAD, properties).await?;
    } else {
        client.publish(topic, QoS::AtLeastOnce, false, PAYLOAD).await?;
    }
    Ok(())
}

/// Raw: batches of 100 publishes, each batch's PUBACKs awaited; then one at a time.
async fn raw_publish(
    port: u16,
    topic: &str,
    messages: usize,
    with_id: bool,
) -> Result<(Figure, Figure), BoxError> {
    let mut raw = Raw::connect(raw_options(port, &unique("raw-pub"), true), None).await?;
    let started = Clock::start();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        for _ in 0..n {
            raw_send(&raw.client, topic, with_id).await?;
        }
        for _ in 0..n {
            raw.acked.recv().await.ok_or("raw publisher stopped")?;
        }
        left -= n;
    }
    let batched = started.stop(messages);
    let single = messages / 10;
    let started = Clock::start();
    for _ in 0..single {
        raw_send(&raw.client, topic, with_id).await?;
        raw.acked.recv().await.ok_or("raw publisher stopped")?;
    }
    let one_by_one = started.stop(single);
    raw.close().await;
    Ok((batched, one_by_one))
}

async fn millstream_publish(
    pubsub: &MqttPubSub,
    topic: &str,
    messages: usize,
) -> Result<(Figure, Figure), BoxError> {
    let started = Clock::start();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        pubsub.publish_batch(topic, (0..n).map(|_| Message::new(PAYLOAD)).collect()).await.std()?;
        left -= n;
    }
    let batched = started.stop(messages);
    let single = messages / 10;
    let started = Clock::start();
    for _ in 0..single {
        pubsub.publish(topic, Message::new(PAYLOAD)).await.std()?;
    }
    Ok((batched, started.stop(single)))
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
    raw_publish_only(port, topic, messages, false).await
}

async fn raw_publish_only(port: u16, topic: &str, messages: usize, with_id: bool) -> Result<(), BoxError> {
    let mut raw = Raw::connect(raw_options(port, &unique("raw-fill"), true), None).await?;
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        for _ in 0..n {
            raw_send(&raw.client, topic, with_id).await?;
        }
        for _ in 0..n {
            raw.acked.recv().await.ok_or("raw publisher stopped")?;
        }
        left -= n;
    }
    raw.close().await;
    Ok(())
}

async fn raw_consume(port: u16, topic: &str, messages: usize, with_id: bool) -> Result<Figure, BoxError> {
    let client_id = unique("raw-sub");
    let filter = format!("$share/bench/{topic}");
    // Create the session and its subscription, then leave.
    Raw::connect(raw_options(port, &client_id, false), Some(filter.clone())).await?.close().await;
    raw_publish_only(port, topic, messages, with_id).await?;
    let started = Clock::start();
    let mut raw = Raw::connect(raw_options(port, &client_id, false), Some(filter)).await?;
    for _ in 0..messages {
        let publish = raw.incoming.recv().await.ok_or("raw consumer stopped")?;
        raw.client.ack(&publish).await?;
    }
    let consumed = started.stop(messages);
    raw.close().await;
    Ok(consumed)
}

async fn millstream_consume(port: u16, topic: &str, messages: usize) -> Result<Figure, BoxError> {
    let config = MqttConfig::new(unique("bench")).host("127.0.0.1", port);
    let pubsub = MqttPubSub::connect(config.clone()).await.std()?;
    drop(pubsub.subscribe(topic, SubscribeOptions::group("bench")).await.std()?);
    Subscriber::close(&pubsub).await.std()?;
    Publisher::close(&pubsub).await.std()?;
    fill(port, topic, messages, true).await?;
    let pubsub = MqttPubSub::connect(config).await.std()?;
    let started = Clock::start();
    let mut sub = pubsub.subscribe(topic, SubscribeOptions::group("bench")).await.std()?;
    for _ in 0..messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.std()?;
        delivery.ack().await.std()?;
    }
    let consumed = started.stop(messages);
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
        let mut figures: Vec<Vec<Figure>> = vec![Vec::new(); 9];
        for run in 0..runs {
            let (raw_batched, raw_single) = raw_publish(port, &unique("bench/raw"), messages, false).await?;
            let (id_batched, id_single) = raw_publish(port, &unique("bench/rawid"), messages, true).await?;
            let pubsub =
                MqttPubSub::connect(MqttConfig::new(unique("pub")).host("127.0.0.1", port)).await.std()?;
            let (ms_batched, ms_single) = millstream_publish(&pubsub, &unique("bench/ms"), messages).await?;
            Publisher::close(&pubsub).await.std()?;
            let raw_consumed = raw_consume(port, &unique("bench/rawc"), messages, false).await?;
            let id_consumed = raw_consume(port, &unique("bench/rawidc"), messages, true).await?;
            let ms_consumed = millstream_consume(port, &unique("bench/msc"), messages).await?;
            let values = [
                ms_batched,
                raw_batched,
                id_batched,
                ms_single,
                raw_single,
                id_single,
                ms_consumed,
                raw_consumed,
                id_consumed,
            ];
            eprintln!("run {run}: {values:?}");
            for (i, value) in values.into_iter().enumerate() {
                figures[i].push(value);
            }
        }
        Ok::<_, BoxError>(figures)
    })?;
    let rate = |i: usize| median(rows[i].iter().map(|f| f.rate).collect());
    let cpu = |i: usize| median(rows[i].iter().map(|f| f.cpu_us).collect());
    println!(
        "{messages} messages of {} bytes, QoS 1, Mosquitto {}, median of {runs} runs\n",
        PAYLOAD.len(),
        mosquitto_version()
    );
    println!(
        "| scenario | millstream msg/s | raw rumqttc msg/s | ratio | raw + id property msg/s | ratio | CPU µs/msg: millstream / raw / raw + id |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for (name, i) in [
        ("publish, batches of 100 (each batch's PUBACKs awaited)", 0),
        ("publish, one at a time (PUBACK awaited; 1/10 of the messages)", 3),
        ("consume + ack (a group's resumed session)", 6),
    ] {
        let (ms, raw, id) = (rate(i), rate(i + 1), rate(i + 2));
        println!(
            "| {name} | {ms:.0} | {raw:.0} | {:.2} | {id:.0} | {:.2} | {:.1} / {:.1} / {:.1} |",
            ms / raw,
            ms / id,
            cpu(i),
            cpu(i + 1),
            cpu(i + 2)
        );
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
