//! [`TraceContext`]: W3C trace context (`traceparent`) carried from a message to what it causes.

use futures_core::future::BoxFuture;

use super::{Middleware, Next};
use crate::handler::HandlerResult;
use crate::keys::TRACEPARENT;
use crate::message::Message;

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

    /// The header value, in an allocation of exactly its size (`to_string` goes through the
    /// formatter and a growing buffer).
    pub fn to_header(&self) -> Box<str> {
        let mut header = String::with_capacity(HEADER_LEN);
        header.push_str("00-");
        push_hex(&mut header, (self.trace_id >> 64) as u64, 16);
        push_hex(&mut header, self.trace_id as u64, 16);
        header.push('-');
        push_hex(&mut header, self.parent_id, 16);
        header.push('-');
        push_hex(&mut header, u64::from(self.flags), 2);
        header.into_boxed_str()
    }
}

/// The length of a version 00 `traceparent`.
const HEADER_LEN: usize = 55;

/// Appends the low `digits` hex digits of `value` (lower case, zero-padded).
fn push_hex(out: &mut String, value: u64, digits: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..digits).rev() {
        out.push(char::from(DIGITS[((value >> (shift * 4)) & 0xf) as usize]));
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_header())
    }
}

/// A trace id shown as 32 hex digits, formatted only if a span records it.
struct TraceIdHex(u128);

impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
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
        message.metadata_mut().insert_static(TRACEPARENT, hop.to_header());
        tracing::Span::current().record("trace_id", tracing::field::display(TraceIdHex(hop.trace_id)));
        Box::pin(async move {
            let mut outputs = next.run(message).await?;
            // Formatted again only when something is returned: most messages return nothing.
            let mut header: Option<Box<str>> = None;
            for output in &mut outputs {
                if !output.message.metadata().contains_key(TRACEPARENT) {
                    let header = header.get_or_insert_with(|| hop.to_header()).clone();
                    output.message.metadata_mut().insert_static(TRACEPARENT, header);
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
        assert_eq!(&*tp.to_header(), h);
        let small = TraceParent { trace_id: 1, parent_id: 2, flags: 0 };
        assert_eq!(&*small.to_header(), "00-00000000000000000000000000000001-0000000000000002-00");
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
