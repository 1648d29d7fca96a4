//! [`TraceContext`]: W3C trace context (`traceparent`) carried from a message to what it causes.

use futures_core::future::BoxFuture;

use super::{Middleware, Next};
use crate::handler::HandlerResult;
use crate::message::Message;

/// The metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent`: `00-<trace id>-<parent id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (16 bytes, never all zero).
    pub trace_id: u128,
    /// The id of the span that caused this message (8 bytes, never zero).
    pub parent_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses version 00 of the header; `None` for anything malformed (a new trace then starts).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00"
            || parts.next().is_some()
            || trace.len() != 32
            || parent.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !(hex(trace) && hex(parent) && hex(flags)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent { trace_id, parent_id, flags })
    }

    /// A new trace (sampled), for a message that arrives without one.
    pub fn new_root() -> Self {
        TraceParent { trace_id: nonzero_u128(), parent_id: nonzero_u64(), flags: 1 }
    }

    /// The same trace with a new span id: this hop.
    pub fn child(&self) -> Self {
        TraceParent { parent_id: nonzero_u64(), ..*self }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            return v;
        }
    }
}

/// Continues the trace of each message (or starts one): this hop gets a span id of its own, the
/// handler sees it in the message's `traceparent` (and [`Ctx`](crate::Ctx) publishes carry it),
/// every returned message carries it, and the trace id is recorded on the router's
/// `millstream.handle` span as `trace_id`. Compatible with OpenTelemetry's W3C propagator.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContext;

impl Middleware for TraceContext {
    fn call(&self, mut message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        let incoming = message.metadata().get(TRACEPARENT).and_then(TraceParent::parse);
        let hop = match incoming {
            Some(parent) => parent.child(),
            None => TraceParent::new_root(),
        };
        let header: Box<str> = hop.to_string().into();
        message.metadata_mut().insert(TRACEPARENT, header.clone());
        tracing::Span::current().record("trace_id", tracing::field::display(hop.trace_id_hex()));
        Box::pin(async move {
            let mut outputs = next.run(message).await?;
            for output in &mut outputs {
                if !output.message.metadata().contains_key(TRACEPARENT) {
                    output.message.metadata_mut().insert(TRACEPARENT, header.clone());
                }
            }
            Ok(outputs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_w3c_traceparent() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(h).unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.to_string(), h);
        let child = tp.child();
        assert_eq!(child.trace_id, tp.trace_id);
        assert_ne!(child.parent_id, tp.parent_id);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }
}
