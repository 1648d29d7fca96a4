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
//!   with `enable.auto.offset.store=false`, reads the payload and the `millstream-id` header
//!   (the same work: millstream must read each record's id, and librdkafka parses a record's
//!   headers only when asked), `store_offset_from_message` after each message (`store_offset`
//!   by topic name would make librdkafka look the topic up for every record), auto commit.
//!   Both with `fetch.wait.max.ms=10`.
//!
//! The binary runs on jemalloc, for librdkafka's allocations too (`tikv-jemallocator` with
//! unprefixed `malloc`): under glibc's malloc a loop that parses record headers slows down as the
//! process runs, whichever side runs it (see docs/backends.md, "Kafka: speed").
//!
//! One message is published before the timing starts (connection, metadata and producer id
//! are set up then), and consumed with the others. The consume+ack clock starts once the first
//! record has been handled, so that it measures reading, not the group's join (which takes
//! about 150 ms on tansu, as long as reading 200 000 records: it made the figure of a short run
//! mostly the join's, and moved it by ±0.1 between invocations).
//!
//! Each scenario runs `runs` times (which side goes first alternates) and the median is
//! reported; each run's figures go to stderr, with the minor page faults, context switches (all
//! threads) and CPU time of the process during each consume phase (`kafka-bench probe ...`).
//! With no broker answering it says so and exits 0.
//!
//! Each run deletes its topic at the end: on tansu 0.6 with SQLite storage (the broker `.ci/test`
//! starts on 9092) that deletes every topic of the broker, so run it on a private tansu with
//! memory storage (docs/backends.md, "Kafka speed"), not on a broker tests are using.

use std::time::{Duration, Instant};

use millstream::pubsub::kafka::{KafkaConfig, KafkaPubSub};
use millstream::{Message, Publisher, SubscribeOptions, Subscriber};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message as _};

mod side_by_side;

use side_by_side::{rate, unique, Args, Bench, BoxError, PAYLOAD};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const BATCH: usize = 1000;

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

    let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("one")).await.map_err(|e| e.into_std())?;
    let mut started = None;
    let mut before = [0; 3];
    for _ in 0..=messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.map_err(|e| e.into_std())?;
        delivery.ack().await.map_err(|e| e.into_std())?;
        // The clock starts once the group has been joined and the first record handled.
        started.get_or_insert_with(|| {
            before = probe();
            Instant::now()
        });
    }
    let consume = rate(messages, started.map_or(Duration::ZERO, |at| at.elapsed()));
    report("millstream", before, messages);
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
    let mut started = None;
    let mut before = [0; 3];
    for _ in 0..=messages {
        let record = consumer.recv().await?;
        let _payload = bytes_of(record.payload());
        let _id = std::hint::black_box(id_of(&record));
        consumer.store_offset_from_message(&record)?;
        started.get_or_insert_with(|| {
            before = probe();
            Instant::now()
        });
    }
    let consume = rate(messages, started.map_or(Duration::ZERO, |at| at.elapsed()));
    report("raw", before, messages);
    tokio::task::spawn_blocking(move || drop(consumer)).await?;
    let _ = admin.delete_topic(&topic).await;
    Publisher::close(&admin).await.map_err(|e| e.into_std())?;
    producer.flush(Duration::from_secs(10))?;
    Ok([publish, consume])
}

/// Minor faults, context switches (voluntary + involuntary, every thread) and CPU ticks of this
/// process so far.
fn probe() -> [u64; 3] {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    let mut switches = 0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    [field(10), switches, field(14) + field(15)]
}

fn report(who: &str, before: [u64; 3], messages: usize) {
    let after = probe();
    eprintln!(
        "kafka-bench probe {who}: {} minor faults, {} context switches, {} CPU ms ({} records)",
        after[0] - before[0],
        after[1] - before[1],
        (after[2] - before[2]) * 10,
        messages
    );
}

/// A copy of the payload, as millstream makes for each delivery.
fn bytes_of(payload: Option<&[u8]>) -> Vec<u8> {
    payload.unwrap_or_default().to_vec()
}

/// The record's id header as text (millstream goes on to parse it as a UUID, without allocating).
fn id_of<'a>(record: &'a BorrowedMessage<'_>) -> Option<&'a str> {
    let headers = record.headers()?;
    headers
        .iter()
        .find(|header| header.key == "millstream-id")
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse("--brokers", "127.0.0.1:9092", &["--publish-only"]);
    side_by_side::main_with("kafka-bench", args, async |args| {
        if let Err(error) = KafkaPubSub::connect(KafkaConfig::new(args.address.clone())).await {
            println!("kafka-bench: skipped, no Kafka broker answers at {}: {error}", args.address);
            return std::process::ExitCode::SUCCESS;
        }
        let publish_only = args.switches.iter().any(|s| s == "--publish-only");
        let bench = Bench {
            name: "kafka-bench",
            raw: "raw rdkafka",
            setting: format!(
                "{} messages of {} bytes, batches of {BATCH}, 3 partitions",
                args.messages,
                PAYLOAD.len()
            ),
            scenarios: ["publish (batches, reports awaited)", "consume+ack"],
        };
        let (brokers, messages) = (args.address.as_str(), args.messages);
        bench
            .run(
                args.runs,
                async || millstream_run(brokers, messages, publish_only).await,
                async || raw_run(brokers, messages, publish_only).await,
            )
            .await
    })
}
