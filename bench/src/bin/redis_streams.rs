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

const BATCH: usize = 100;
const PAYLOAD: &[u8] =
    br#"{"id":123456,"sku":"ABC-123","qty":3,"note":"benchmark message, about 100 bytes"}"#;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    messages: usize,
    runs: usize,
    url: String,
}

fn args() -> Result<Args, String> {
    let mut args = Args { messages: 100_000, runs: 3, url: "redis://127.0.0.1:6379".to_owned() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--messages" => args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?,
            "--runs" => args.runs = value()?.parse::<usize>().map_err(|e| format!("--runs: {e}"))?.max(1),
            "--url" => args.url = value()?,
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("redis-streams: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let probe = async {
            let client = redis::Client::open(args.url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        if let Err(error) = tokio::time::timeout(Duration::from_secs(5), probe).await.unwrap_or_else(|_| {
            Err(redis::RedisError::from((redis::ErrorKind::IoError, "no answer within 5 s")))
        }) {
            println!("redis-streams: skipped, no Redis server answers at {}: {error}", args.url);
            return std::process::ExitCode::SUCCESS;
        }
        let (mut ours, mut raw) = (vec![Vec::new(); 3], vec![Vec::new(); 3]);
        for run in 0..args.runs {
            // Alternate which side goes first, so that neither always finds the server warmer.
            let order = if run % 2 == 0 { [true, false] } else { [false, true] };
            for side in order {
                let record = if side { &mut ours } else { &mut raw };
                let result = if side {
                    millstream_run(&args.url, args.messages).await
                } else {
                    raw_run(&args.url, args.messages).await
                };
                match result {
                    Ok(rates) => {
                        let name = if side { "millstream" } else { "raw" };
                        eprintln!(
                            "run {run} {name}: {:.0} / {:.0} / {:.0} msg/s",
                            rates[0], rates[1], rates[2]
                        );
                        for (i, rate) in rates.into_iter().enumerate() {
                            record[i].push(rate);
                        }
                    }
                    Err(error) => {
                        eprintln!("redis-streams: a run failed: {error}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        }
        println!(
            "{} messages of {} bytes, batches of {BATCH}, median of {} runs\n",
            args.messages,
            PAYLOAD.len(),
            args.runs
        );
        println!("| scenario | millstream msg/s | raw redis msg/s | millstream / raw |");
        println!("|---|---:|---:|---:|");
        let names = ["publish", "consume+ack (each ack awaited)", "consume+ack (acks in flight)"];
        for (i, name) in names.iter().enumerate() {
            let (a, b) = (median(ours[i].clone()), median(raw[i].clone()));
            println!("| {name} | {a:.0} | {b:.0} | {:.2} |", a / b);
        }
        std::process::ExitCode::SUCCESS
    })
}
