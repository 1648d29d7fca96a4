//! Batch handlers: the forms `#[millstream::handler(batch = N)]` takes.
use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("readings")]
struct Reading {
    value: f64,
}

#[derive(Serialize)]
struct Total(f64);
impl Publishable for Total {}

#[derive(Clone)]
struct Db;

/// All or nothing, with state; the topic from the payload type.
#[millstream::handler(batch = 100, linger = "20ms")]
async fn store(readings: Vec<Reading>, State(_db): State<Db>) -> Result<()> {
    let _ = readings.len();
    Ok(())
}

/// Message by message.
#[millstream::handler(topic = "readings.checked", batch = 10)]
async fn check(readings: Vec<Reading>) -> BatchResult {
    let mut result = BatchResult::ok();
    for (i, reading) in readings.iter().enumerate() {
        if reading.value.is_nan() {
            result = result.fail(i, Error::permanent("not a number"));
        }
    }
    result
}

/// Publishing one value per batch; a zero linger.
#[millstream::handler(topic = "readings.summed", publish = "totals", batch = 500, linger = "0ms")]
async fn sum(readings: Vec<Reading>) -> Result<Total> {
    Ok(Total(readings.iter().map(|r| r.value).sum()))
}

fn main() {
    let names: Vec<&str> = millstream::registry::handlers().iter().map(|d| d.info().fn_name).collect();
    for name in ["store", "check", "sum"] {
        assert!(names.contains(&name), "{name} registered");
    }
    let store = millstream::registry::handlers().iter().find(|d| d.info().fn_name == "store").unwrap().info();
    assert_eq!((store.topic, store.payload), ("readings", Some("Reading")));
}
