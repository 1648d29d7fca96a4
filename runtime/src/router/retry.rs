//! Non-blocking retry topics ([`Route::retry_topics`](super::Route::retry_topics)): the stages
//! one handler runs as, and their names.

use std::sync::Arc;
use std::time::Duration;

/// What one stage of a handler with retry topics does with a failure, and whether it waits for
/// a message's due time first.
#[derive(Debug)]
pub(crate) struct RetryStage {
    /// A retry stage (not the main one): a message waits for its due time
    /// ([`keys::retry::DUE`](crate::keys::retry::DUE)) before the handler runs.
    pub(crate) waits: bool,
    /// Where a transient failure goes next, and after how long: the next retry topic.
    pub(crate) next: Option<(Arc<str>, Duration)>,
    /// Where a failure goes when there is no next stage, and where a permanent one goes from any
    /// stage: the handler's dead letter topic; `None`: the router's poison topic.
    pub(crate) dead_letter: Option<Arc<str>>,
    /// The handler's own topic (what a dead-lettered message names as where it came from).
    pub(crate) topic: Arc<str>,
}

/// One stage: the name it runs under, the topic it reads, what it does with failures.
pub(crate) struct Stage {
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) retry: Arc<RetryStage>,
}

/// A delay as a topic name's suffix: `500ms`, `10s`, `1m`, `2h` (the largest whole unit).
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    match ms {
        0 => "0ms".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// The retry topic of `topic` for `delay`: `{topic}.retry.{label}`.
pub fn retry_topic(topic: &str, delay: Duration) -> String {
    format!("{topic}.retry.{}", delay_label(delay))
}

/// The stages of a handler named `name` on `topic` with retry `delays`: the main one on `topic`,
/// then one per delay on its retry topic, named `{name}.retry.{label}`, each passing its
/// failures to the next, the last to `dead_letter`.
pub(crate) fn stages(name: &str, topic: &str, delays: &[Duration], dead_letter: Option<&str>) -> Vec<Stage> {
    let dead_letter: Option<Arc<str>> = dead_letter.map(Arc::from);
    let retry_topics: Vec<Arc<str>> = delays.iter().map(|d| Arc::from(retry_topic(topic, *d))).collect();
    let next = |i: usize| retry_topics.get(i).map(|topic| (topic.clone(), delays[i]));
    let main: Arc<str> = Arc::from(topic);
    let mut stages = Vec::with_capacity(delays.len() + 1);
    stages.push(Stage {
        name: name.to_owned(),
        topic: topic.to_owned(),
        retry: Arc::new(RetryStage {
            waits: false,
            next: next(0),
            dead_letter: dead_letter.clone(),
            topic: main.clone(),
        }),
    });
    for (i, delay) in delays.iter().enumerate() {
        stages.push(Stage {
            name: format!("{name}.retry.{}", delay_label(*delay)),
            topic: retry_topics[i].to_string(),
            retry: Arc::new(RetryStage {
                waits: true,
                next: next(i + 1),
                dead_letter: dead_letter.clone(),
                topic: main.clone(),
            }),
        });
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_use_the_largest_whole_unit() {
        let label = |ms: u64| delay_label(Duration::from_millis(ms));
        assert_eq!(
            [label(500), label(1_000), label(90_000), label(60_000), label(7_200_000)],
            ["500ms", "1s", "90s", "1m", "2h"]
        );
        assert_eq!(label(0), "0ms");
    }

    #[test]
    fn stages_chain_to_the_dead_letter() {
        let delays = [Duration::from_secs(1), Duration::from_secs(10)];
        let stages = stages("bill", "orders", &delays, Some("orders.dlt"));
        let names: Vec<_> = stages.iter().map(|s| (s.name.as_str(), s.topic.as_str())).collect();
        assert_eq!(
            names,
            [
                ("bill", "orders"),
                ("bill.retry.1s", "orders.retry.1s"),
                ("bill.retry.10s", "orders.retry.10s")
            ]
        );
        assert_eq!(
            stages[0].retry.next.as_ref().map(|(t, d)| (&**t, *d)),
            Some(("orders.retry.1s", delays[0]))
        );
        assert_eq!(stages[1].retry.next.as_ref().map(|(t, _)| &**t), Some("orders.retry.10s"));
        assert!(stages[2].retry.next.is_none() && stages[2].retry.waits && !stages[0].retry.waits);
        assert_eq!(stages[2].retry.dead_letter.as_deref(), Some("orders.dlt"));
    }
}
