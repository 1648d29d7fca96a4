//! Redis Streams throughput (issue 16, Speed): millstream's `RedisPubSub` and the raw `redis`
//! client doing the same work, side by side in one run.
//!
//! ```text
//! cargo run --release -p millstream-bench --features redis --bin redis-streams -- \
//!     [--messages 100000] [--runs 3] [--url redis://127.0.0.1:6379]
//! ```
//!
//! Scenarios, each on a fresh stream, `messages` messages of the same 83-byte JSON payload:
//! - **publish**: batches of 100; millstream `publish_batch` (one pipeline of `XADD`s), raw one
//!   pipeline of 100 `XADD key * id <36 characters> payload <bytes>` (the same entry millstream
//!   writes: the message id and the payload).
//! - **consume+ack**: a new group reads everything from the start and acks each message before
//!   taking the next; millstream: `subscribe` + `next` + `ack().await`, raw: `XREADGROUP COUNT 100`
//!   then `XACK` per entry, each awaited.
//! - **consume+ack, acks in flight**: the same, but acks are not awaited one by one (the router's
//!   lanes settle concurrently): millstream spawns each ack, raw sends each `XACK` without waiting,
//!   and both wait for all at the end.
//!
//! Each scenario runs `runs` times (millstream and raw, which goes first alternating from run to
//! run) and the median is reported; each run's figures go to stderr.
//! With no server answering at the URL it says so and exits 0.

use std::time::{Duration, Instant};

use millstream::pubsub::redis::{RedisConfig, RedisPubSub};
use millstream::{Message, Publisher, SubscribeOptions, Subscriber};
use redis::Value;

#[path = "../side_by_side.rs"]
mod side_by_side;

use side_by_side::{rate, unique, Args, Bench, BoxError, PAYLOAD};

const BATCH: usize = 100;

/// (publish, consume+ack, consume+ack with acks in flight) in msg/s.
type Rates = [f64; 3];

async fn millstream_run(url: &str, messages: usize) -> Result<Rates, BoxError> {
    let config = RedisConfig::default().key_prefix("msbench:").batch(BATCH).max_in_flight(1000);
    let pubsub = RedisPubSub::connect(url, config).await.map_err(|e| e.into_std())?;
    let topic = unique("millstream");
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

    let started = Instant::now();
    let mut sub = pubsub.subscribe(&topic, SubscribeOptions::group("one")).await.map_err(|e| e.into_std())?;
    for _ in 0..messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.map_err(|e| e.into_std())?;
        delivery.ack().await.map_err(|e| e.into_std())?;
    }
    let consume = rate(messages, started.elapsed());
    drop(sub);

    let started = Instant::now();
    let mut sub =
        pubsub.subscribe(&topic, SubscribeOptions::group("many")).await.map_err(|e| e.into_std())?;
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..messages {
        let delivery = sub.next().await.ok_or("subscription ended")?.map_err(|e| e.into_std())?;
        acks.spawn(delivery.ack());
    }
    while let Some(ack) = acks.join_next().await {
        ack?.map_err(|e| e.into_std())?;
    }
    let concurrent = rate(messages, started.elapsed());
    drop(sub);
    pubsub.delete_topics(&[topic]).await.map_err(|e| e.into_std())?;
    Subscriber::close(&pubsub).await.map_err(|e| e.into_std())?;
    Publisher::close(&pubsub).await.map_err(|e| e.into_std())?;
    Ok([publish, consume, concurrent])
}

/// Reads up to `BATCH` new entries of `group`; returns their ids.
async fn read_raw(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    group: &str,
) -> Result<Vec<Value>, BoxError> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("c")
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(2000)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query_async(conn)
        .await?;
    let Value::Array(streams) = reply else { return Ok(Vec::new()) };
    let mut ids = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else { continue };
        let Some(Value::Array(entries)) = pair.pop() else { continue };
        for entry in entries {
            let Value::Array(mut parts) = entry else { continue };
            let _fields = parts.pop();
            if let Some(id) = parts.pop() {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

fn id_arg(id: &Value) -> &[u8] {
    match id {
        Value::BulkString(bytes) => bytes,
        _ => b"0-0",
    }
}

async fn raw_run(url: &str, messages: usize) -> Result<Rates, BoxError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut reader = client.get_multiplexed_async_connection().await?;
    let key = format!("msbench:{}", unique("raw"));
    let started = Instant::now();
    let mut left = messages;
    while left > 0 {
        let n = left.min(BATCH);
        let mut pipe = redis::pipe();
        for i in 0..n {
            // The same entry as millstream's: a 36-character id and the payload.
            let id = format!("{:036}", messages - left + i);
            pipe.cmd("XADD").arg(&key).arg("*").arg("id").arg(id).arg("payload").arg(PAYLOAD).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        left -= n;
    }
    let publish = rate(messages, started.elapsed());

    let mut results = [publish, 0.0, 0.0];
    for (slot, group, in_flight) in [(1, "one", false), (2, "many", true)] {
        let started = Instant::now();
        redis::cmd("XGROUP").arg("CREATE").arg(&key).arg(group).arg("0").query_async::<()>(&mut conn).await?;
        let mut done = 0;
        let mut acks = tokio::task::JoinSet::new();
        while done < messages {
            for id in read_raw(&mut reader, &key, group).await? {
                let mut ack = redis::cmd("XACK");
                ack.arg(&key).arg(group).arg(id_arg(&id));
                if in_flight {
                    let mut conn = conn.clone();
                    acks.spawn(async move { ack.query_async::<i64>(&mut conn).await });
                } else {
                    ack.query_async::<i64>(&mut conn).await?;
                }
                done += 1;
            }
        }
        while let Some(ack) = acks.join_next().await {
            ack??;
        }
        results[slot] = rate(messages, started.elapsed());
    }
    redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn).await?;
    Ok(results)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse("--url", "redis://127.0.0.1:6379", &[]);
    side_by_side::main_with("redis-streams", args, async |args| {
        let probe = async {
            let client = redis::Client::open(args.address.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        if let Err(error) = tokio::time::timeout(Duration::from_secs(5), probe).await.unwrap_or_else(|_| {
            Err(redis::RedisError::from((redis::ErrorKind::IoError, "no answer within 5 s")))
        }) {
            println!("redis-streams: skipped, no Redis server answers at {}: {error}", args.address);
            return std::process::ExitCode::SUCCESS;
        }
        let bench = Bench {
            name: "redis-streams",
            raw: "raw redis",
            setting: format!("{} messages of {} bytes, batches of {BATCH}", args.messages, PAYLOAD.len()),
            scenarios: ["publish", "consume+ack (each ack awaited)", "consume+ack (acks in flight)"],
        };
        let (url, messages) = (args.address.as_str(), args.messages);
        bench
            .run(
                args.runs,
                async || millstream_run(url, messages).await,
                async || raw_run(url, messages).await,
            )
            .await
    })
}
