//! RabbitMQ side by side with raw lapin (`--features amqp`, `--scenario amqp`): publish with
//! confirms and consume-with-ack of `messages` small messages, through millstream's
//! `AmqpPubSub` and through lapin alone, on the same server in one run.
//!
//! Both sides do the same work: a durable topic exchange and a durable group queue bound to it;
//! persistent, mandatory publishes sent in bursts of [`BATCH`] whose confirms are awaited before
//! the next burst; then one consumer with a prefetch of 100 acking every delivery (each ack
//! awaited). Needs RabbitMQ on 127.0.0.1:5672 (guest/guest; `MILLSTREAM_AMQP_URL` overrides).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use millstream::pubsub::amqp::lapin::{self, options::*, types::FieldTable, BasicProperties, ExchangeKind};
use millstream::pubsub::amqp::{AmqpConfig, AmqpPubSub, Preset};
use millstream::{Message, Publisher, SubscribeOptions, Subscriber};

/// Messages per publish burst, on both sides.
const BATCH: usize = 100;
const PREFETCH: u16 = 100;
/// Runs of each side (alternating); the table shows the medians.
const ROUNDS: usize = 3;
const PAYLOAD: &[u8] =
    br#"{"id":123456,"sku":"ABC-123","qty":3,"note":"benchmark message, about 100 bytes"}"#;
const EXCHANGE: &str = "msbench";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn url() -> String {
    std::env::var("MILLSTREAM_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("bench.{name}.{}.{}", std::process::id(), nanos % 1_000_000_000)
}

async fn millstream_side(messages: usize) -> Result<(f64, f64), BoxError> {
    let config = AmqpConfig::new(url()).topology(Preset::groups(EXCHANGE)).prefetch(PREFETCH);
    let pubsub = AmqpPubSub::connect(config).await.map_err(|e| e.into_std())?;
    let topic = unique("millstream");
    // The group's queue first: publishes are mandatory.
    drop(pubsub.subscribe(&topic, SubscribeOptions::group("bench")).await.map_err(|e| e.into_std())?);
    let started = Instant::now();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        let batch = (0..n).map(|_| Message::new(PAYLOAD)).collect();
        pubsub.publish_batch(&topic, batch).await.map_err(|e| e.into_std())?;
        left -= n;
    }
    let publish = rate(messages, started.elapsed());
    let started = Instant::now();
    let mut sub =
        pubsub.subscribe(&topic, SubscribeOptions::group("bench")).await.map_err(|e| e.into_std())?;
    for _ in 0..messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.map_err(|e| e.into_std())?;
        delivery.ack().await.map_err(|e| e.into_std())?;
    }
    let consume = rate(messages, started.elapsed());
    drop(sub);
    let channel = pubsub.connection().await.map_err(|e| e.into_std())?.create_channel().await?;
    for queue in [format!("bench.{topic}"), format!("bench.{topic}.dlq")] {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
    Subscriber::close(&pubsub).await.map_err(|e| e.into_std())?;
    Ok((publish, consume))
}

async fn raw_side(messages: usize) -> Result<(f64, f64), BoxError> {
    let connection = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default()).await?;
    let publisher = connection.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    let topic = unique("raw");
    let queue = format!("bench.{topic}");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    publisher.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let queue_options = QueueDeclareOptions { durable: true, ..Default::default() };
    publisher.queue_declare(queue.as_str().into(), queue_options, FieldTable::default()).await?;
    publisher
        .queue_bind(
            queue.as_str().into(),
            EXCHANGE.into(),
            topic.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        let mut confirms = Vec::with_capacity(n);
        for _ in 0..n {
            // What a client that keeps ids and survives restarts sends: an id, persistence.
            let properties = BasicProperties::default()
                .with_message_id(millstream::MessageId::new().to_string().into())
                .with_delivery_mode(2);
            let options = BasicPublishOptions { mandatory: true, immediate: false };
            confirms.push(
                publisher
                    .basic_publish(EXCHANGE.into(), topic.as_str().into(), options, PAYLOAD, properties)
                    .await?,
            );
        }
        for confirm in confirms {
            match confirm.await? {
                lapin::Confirmation::Ack(None) => {}
                other => return Err(format!("not confirmed: {other:?}").into()),
            }
        }
        left -= n;
    }
    let publish = rate(messages, started.elapsed());
    let started = Instant::now();
    let consumer_channel = connection.create_channel().await?;
    consumer_channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..messages {
        let delivery = consumer.next().await.ok_or("consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let consume = rate(messages, started.elapsed());
    publisher.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    connection.close(200, "done".into()).await?;
    Ok((publish, consume))
}

/// The median publish and the median consume rate of `runs`.
fn median(runs: &[(f64, f64)]) -> (f64, f64) {
    let pick = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    (pick(runs.iter().map(|r| r.0).collect()), pick(runs.iter().map(|r| r.1).collect()))
}

/// Runs both sides (raw lapin, then millstream, alternating) and prints the table; the exit code says
/// whether the server answered.
pub(crate) fn main(messages: usize) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let result = runtime.block_on(async {
        // Alternate the sides, ROUNDS times each, and keep each figure's median: a shared
        // machine's load moves both alike.
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            raw.push(raw_side(messages).await?);
            ours.push(millstream_side(messages).await?);
        }
        Ok::<_, BoxError>((median(&raw), median(&ours)))
    });
    match result {
        Ok(((raw_publish, raw_consume), (publish, consume))) => {
            println!(
                "{messages} messages of {} bytes, bursts of {BATCH}, prefetch {PREFETCH}; median of {ROUNDS} \
                 alternating runs per side\n\n\
                 | RabbitMQ | millstream msg/s | raw lapin msg/s | ratio |\n|---|---:|---:|---:|\n\
                 | publish (confirmed) | {publish:.0} | {raw_publish:.0} | {:.2} |\n\
                 | consume + ack | {consume:.0} | {raw_consume:.0} | {:.2} |",
                PAYLOAD.len(),
                publish / raw_publish,
                consume / raw_consume,
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("amqp bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
