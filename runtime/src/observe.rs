//! Router metrics through the [`metrics`](https://docs.rs/metrics) facade (cargo feature
//! `metrics`); without the feature every call here compiles to nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `millstream_messages_received_total` | counter | `handler` |
//! | `millstream_messages_acked_total` | counter | `handler` |
//! | `millstream_messages_nacked_total` | counter | `handler` |
//! | `millstream_messages_poisoned_total` | counter | `handler` |
//! | `millstream_settle_failures_total` | counter | `handler` |
//! | `millstream_messages_in_flight` | gauge | `handler` |
//! | `millstream_handler_duration_seconds` | histogram | `handler` |
//! | `millstream_publish_duration_seconds` | histogram | `handler` |

/// Names of the metrics the router records.
pub mod names {
    /// Deliveries taken from the subscription.
    pub const RECEIVED: &str = "millstream_messages_received_total";
    /// Messages acked (handled, outputs published).
    pub const ACKED: &str = "millstream_messages_acked_total";
    /// Messages nacked (to be redelivered).
    pub const NACKED: &str = "millstream_messages_nacked_total";
    /// Messages sent to a poison topic.
    pub const POISONED: &str = "millstream_messages_poisoned_total";
    /// Acks, nacks and rejects the backend failed to record (after its own retries). A failed ack
    /// means the message will be delivered again: a duplicate, never a loss.
    pub const SETTLE_FAILURES: &str = "millstream_settle_failures_total";
    /// Messages being handled right now.
    pub const IN_FLIGHT: &str = "millstream_messages_in_flight";
    /// Time in the middleware chain and handler.
    pub const HANDLER_DURATION: &str = "millstream_handler_duration_seconds";
    /// Time publishing a handler's outputs.
    pub const PUBLISH_DURATION: &str = "millstream_publish_duration_seconds";
}

/// Pre-registered metric handles of one handler, so the per-message path builds no labels.
#[derive(Clone)]
pub(crate) struct RouteMetrics {
    #[cfg(feature = "metrics")]
    handles: std::sync::Arc<Handles>,
}

#[cfg(feature = "metrics")]
struct Handles {
    received: metrics::Counter,
    acked: metrics::Counter,
    nacked: metrics::Counter,
    poisoned: metrics::Counter,
    settle_failures: metrics::Counter,
    in_flight: metrics::Gauge,
    duration: metrics::Histogram,
    publish: metrics::Histogram,
}

impl RouteMetrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(handler: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let label = || [("handler", handler.to_owned())];
            RouteMetrics {
                handles: std::sync::Arc::new(Handles {
                    received: metrics::counter!(names::RECEIVED, &label()),
                    acked: metrics::counter!(names::ACKED, &label()),
                    nacked: metrics::counter!(names::NACKED, &label()),
                    poisoned: metrics::counter!(names::POISONED, &label()),
                    settle_failures: metrics::counter!(names::SETTLE_FAILURES, &label()),
                    in_flight: metrics::gauge!(names::IN_FLIGHT, &label()),
                    duration: metrics::histogram!(names::HANDLER_DURATION, &label()),
                    publish: metrics::histogram!(names::PUBLISH_DURATION, &label()),
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        RouteMetrics {}
    }

    #[inline]
    pub(crate) fn received(&self) {
        #[cfg(feature = "metrics")]
        {
            self.handles.received.increment(1);
            self.handles.in_flight.increment(1.0);
        }
    }

    #[inline]
    pub(crate) fn settled(&self, acked: bool) {
        #[cfg(feature = "metrics")]
        {
            self.handles.in_flight.decrement(1.0);
            if acked {
                self.handles.acked.increment(1);
            } else {
                self.handles.nacked.increment(1);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = acked;
    }

    #[inline]
    pub(crate) fn poisoned(&self) {
        #[cfg(feature = "metrics")]
        self.handles.poisoned.increment(1);
    }

    /// A settle (ack, nack, reject) the backend failed to record.
    #[inline]
    pub(crate) fn settle_failed(&self) {
        #[cfg(feature = "metrics")]
        self.handles.settle_failures.increment(1);
    }

    /// Whether durations are worth measuring (a clock read per message otherwise).
    #[inline]
    pub(crate) const fn timed(&self) -> bool {
        cfg!(feature = "metrics")
    }

    #[inline]
    pub(crate) fn handler_duration(&self, seconds: f64) {
        #[cfg(feature = "metrics")]
        self.handles.duration.record(seconds);
        #[cfg(not(feature = "metrics"))]
        let _ = seconds;
    }

    #[inline]
    pub(crate) fn publish_duration(&self, seconds: f64) {
        #[cfg(feature = "metrics")]
        self.handles.publish.record(seconds);
        #[cfg(not(feature = "metrics"))]
        let _ = seconds;
    }
}

/// Counts a message poisoned by middleware (labels built here: poisoning is rare).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn poisoned(handler: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::POISONED, "handler" => handler.to_owned()).increment(1);
}
