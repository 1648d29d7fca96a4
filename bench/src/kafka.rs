//! Kafka throughput (issue 14, Speed): millstream's `KafkaPubSub` and raw rdkafka doing the same
//! work against the same broker, side by side in one run.
//!
//! ```text
//! cargo run --release -p millstream-bench --features kafka --bin kafka-bench -- \
//!     [--messages 100000] [--runs 3] [--brokers 127.0.0.1:9092] [--publish-only]
//! ```
//!
//! Scenarios, each on a fresh topic of 3 partitions, `messages` messages of the same 83-byte
//! JSON payload:
//! - **publish**: batches of 1 000, each batch's delivery reports awaited before the next;
//!   millstream `publish_batch`, raw a `FutureProducer::send_result` per message then every
//!   `DeliveryFuture`. Both producers idempotent with `acks=all`, `linger.ms=5`.
//! - **consume+ack**: a new group reads everything from the start and acks each message before
//!   taking the next; millstream: `subscribe` + `next` + `ack().await`; raw: a `StreamConsumer`
//!   with `enable.auto.offset.store=false`, `store_offset` after each message, auto commit.
//!   Both with `fetch.wait.max.ms=10`.
//!
//! One message is published before the timing starts (connection, metadata and producer id
//! are set up then), and consumed with the others.
//!
//! Each scenario runs `runs` times (which side goes first alternates) and the median is
//! reported; each run's figures go to stderr. With no broker answering it says so and exits 0.

use std::time::{Duration, Instant};

use millstream::pubsub::kafka::{KafkaConfig, KafkaPubSub};
use millstream::{Message, Publisher, SubscribeOptions, Subscriber};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message as _};

const BATCH: usize = 1000;
const PAYLOAD: &[u8] =
    br#"{"id":123456,"sku":"ABC-123","qty":3,"note":"benchmark message, about 100 bytes"}"#;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    /// Only the publish scenario (`--publish-only`).
    publish_only: bool,
    messages: usize,
    runs: usize,
    brokers: String,
}

fn args() -> Result<Args, String> {
    let mut args =
        Args { publish_only: false, messages: 100_000, runs: 3, brokers: "127.0.0.1:9092".to_owned() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--messages" => args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?,
            "--runs" => args.runs = value()?.parse::<usize>().map_err(|e| format!("--runs: {e}"))?.max(1),
            "--brokers" => args.brokers = value()?,
            "--publish-only" => args.publish_only = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn unique(side: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("bench.{side}.{}.{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// (publish, consume+ack) in msg/s.
type Rates = [f64; 2];

async fn millstream_run(brokers: &str, messages: usize, publish_only: bool) -> Result<Rates, BoxError> {
    let pubsub = KafkaPubSub::connect(KafkaConfig::new(brokers)).await.map_err(|e| e.into_std())?;
    let topic = unique("millstream");
    pubsub.create_topic(&topic, 3, 1).await.map_err(|e| e.into_std())?;
    // Warm-up (connection, metadata, producer id), outside the timing, as for the raw side.
    pubsub.publish(&topic, Message::new(PAYLOAD)).await.map_err(|e| e.into_std())?;
    let started = Instant::now();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        pubsub
            .publish_batch(&topic, (0..n).map(|_| Message::new(PAYLOAD)).collect())
            .await
            .map_err(|e| e.into_std())?;
        left -= n;
    }
    let publish = rate(messages, started.elapsed());
    if publish_only {
        Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
        let _ = pubsub.delete_topic(&topic).await;
        return Ok([publish, f64::NAN]);
    }

    let started = Instant::now();
    let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("one")).await.map_err(|e| e.into_std())?;
    for _ in 0..=messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.map_err(|e| e.into_std())?;
        delivery.ack().await.map_err(|e| e.into_std())?;
    }
    let consume = rate(messages, started.elapsed());
    drop(sub);
    Subscriber::close(&pubsub).await.map_err(|e| e.into_std())?;
    let _ = pubsub.delete_topic(&topic).await;
    Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
    Ok([publish, consume])
}

async fn raw_run(brokers: &str, messages: usize, publish_only: bool) -> Result<Rates, BoxError> {
    let topic = unique("raw");
    // The topic, made the same way (millstream's admin helper) so that only the data path differs.
    let admin = KafkaPubSub::connect(KafkaConfig::new(brokers)).await.map_err(|e| e.into_std())?;
    admin.create_topic(&topic, 3, 1).await.map_err(|e| e.into_std())?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let warm_up = FutureRecord::<[u8], [u8]>::to(&topic).payload(PAYLOAD);
    producer.send_result(warm_up).map_err(|(e, _)| e)?.await?.map_err(|(e, _)| e)?;
    let started = Instant::now();
    let mut left = messages;
    let mut n = 0u64;
    while left > 0 {
        let batch = left.min(BATCH);
        let mut pending = Vec::with_capacity(batch);
        for _ in 0..batch {
            // The same record as millstream's: a 36-character id header and the payload.
            let id = format!("{n:036}");
            n += 1;
            let headers =
                OwnedHeaders::new().insert(Header { key: "millstream-id", value: Some(id.as_bytes()) });
            let record = FutureRecord::<[u8], [u8]>::to(&topic).payload(PAYLOAD).headers(headers);
            pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for future in pending {
            future.await?.map_err(|(e, _)| e)?;
        }
        left -= batch;
    }
    let publish = rate(messages, started.elapsed());
    if publish_only {
        producer.flush(Duration::from_secs(10))?;
        let _ = admin.delete_topic(&topic).await;
        return Ok([publish, f64::NAN]);
    }

    let started = Instant::now();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "one")
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "10000")
        .create()?;
    consumer.subscribe(&[&topic])?;
    for _ in 0..=messages {
        let record = consumer.recv().await?;
        let _payload = bytes_of(record.payload());
        consumer.store_offset(&topic, record.partition(), record.offset() + 1)?;
    }
    let consume = rate(messages, started.elapsed());
    tokio::task::spawn_blocking(move || drop(consumer)).await?;
    let _ = admin.delete_topic(&topic).await;
    Publisher::close(&admin).await.map_err(|e| e.into_std())?;
    producer.flush(Duration::from_secs(10))?;
    Ok([publish, consume])
}

/// A copy of the payload, as millstream makes for each delivery.
fn bytes_of(payload: Option<&[u8]>) -> Vec<u8> {
    payload.unwrap_or_default().to_vec()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("kafka-bench: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        if let Err(error) = KafkaPubSub::connect(KafkaConfig::new(args.brokers.clone())).await {
            println!("kafka-bench: skipped, no Kafka broker answers at {}: {error}", args.brokers);
            return std::process::ExitCode::SUCCESS;
        }
        let (mut ours, mut raw) = (vec![Vec::new(); 2], vec![Vec::new(); 2]);
        for run in 0..args.runs {
            let order = if run % 2 == 0 { [true, false] } else { [false, true] };
            for side in order {
                let record = if side { &mut ours } else { &mut raw };
                let result = if side {
                    millstream_run(&args.brokers, args.messages, args.publish_only).await
                } else {
                    raw_run(&args.brokers, args.messages, args.publish_only).await
                };
                match result {
                    Ok(rates) => {
                        let name = if side { "millstream" } else { "raw" };
                        eprintln!("run {run} {name}: {:.0} / {:.0} msg/s", rates[0], rates[1]);
                        for (i, rate) in rates.into_iter().enumerate() {
                            record[i].push(rate);
                        }
                    }
                    Err(error) => {
                        eprintln!("kafka-bench: a run failed: {error}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        }
        println!(
            "{} messages of {} bytes, batches of {BATCH}, 3 partitions, median of {} runs\n",
            args.messages,
            PAYLOAD.len(),
            args.runs
        );
        println!("| scenario | millstream msg/s | raw rdkafka msg/s | millstream / raw |");
        println!("|---|---:|---:|---:|");
        for (i, name) in ["publish (batches, reports awaited)", "consume+ack"].iter().enumerate() {
            let (a, b) = (median(ours[i].clone()), median(raw[i].clone()));
            println!("| {name} | {a:.0} | {b:.0} | {:.2} |", a / b);
        }
        std::process::ExitCode::SUCCESS
    })
}
