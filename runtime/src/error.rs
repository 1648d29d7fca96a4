//! The one error type of millstream, for handlers and for the framework alike.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// What went wrong, broadly. Middleware and the router decide on it (retry, poison, give up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A handler returned an error.
    Handler,
    /// A payload did not decode into the handler's type. Always permanent.
    Decode,
    /// A value could not be encoded for publishing.
    Encode,
    /// A handler panicked.
    Panic,
    /// Something did not finish in time.
    Timeout,
    /// A backend (broker, database) failed.
    Backend,
    /// The publisher, subscriber or router was closed.
    Closed,
    /// The application is misconfigured (reported when it is built, before any message is read).
    Config,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Handler => "handler error",
            ErrorKind::Decode => "payload does not decode",
            ErrorKind::Encode => "value does not encode",
            ErrorKind::Panic => "handler panicked",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Backend => "backend error",
            ErrorKind::Closed => "closed",
            ErrorKind::Config => "invalid configuration",
        }
    }
}

/// The error type of millstream: what handlers return and what the framework reports.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it with `?`. An error is either
/// *transient* (the default: the message is nacked and redelivered, or retried by middleware) or
/// *permanent* ([`Error::permanent`], and every decode failure): retrying cannot help, so the
/// message goes to the poison queue at once.
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself, so that the blanket
/// `From` conversion is possible; [`Error::source`] and [`Error::into_std`] give access to the cause.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    permanent: bool,
    message: Cow<'static, str>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    retry_after: Option<Duration>,
    /// The delivery attempt a [`CountAttempts`](crate::middleware::CountAttempts) layer counted,
    /// for the poison topic's metadata when it is not the backend's.
    attempt: Option<u32>,
}

/// `Result<T, millstream::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                permanent: kind == ErrorKind::Decode,
                message: message.into(),
                source: None,
                retry_after: None,
                attempt: None,
            }),
        }
    }

    /// A transient handler error with a message (the message is nacked and may be retried).
    pub fn msg(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Handler, message)
    }

    /// A permanent handler error: never retried, sent straight to the poison queue.
    pub fn permanent(message: impl Into<Cow<'static, str>>) -> Self {
        Error::msg(message).into_permanent()
    }

    /// Wraps a cause under `kind`, with the cause's text as the message.
    pub fn with_source(kind: ErrorKind, source: impl StdError + Send + Sync + 'static) -> Self {
        let mut error = Error::new(kind, source.to_string());
        error.inner.source = Some(Box::new(source));
        error
    }

    /// A payload that did not decode (permanent), carrying the decoder's message.
    pub fn decode(source: impl StdError + Send + Sync + 'static) -> Self {
        Error::with_source(ErrorKind::Decode, source)
    }

    /// A backend failure, carrying the client library's error.
    pub fn backend(source: impl StdError + Send + Sync + 'static) -> Self {
        Error::with_source(ErrorKind::Backend, source)
    }

    /// Adds context in front of the message: `"{context}: {message}"`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.inner.message = format!("{context}: {}", self.inner.message).into();
        self
    }

    /// Marks the error permanent: the message will not be retried.
    pub fn into_permanent(mut self) -> Self {
        self.inner.permanent = true;
        self
    }

    /// Asks for the message to be redelivered no sooner than `delay` (where the backend can
    /// delay a nack); see [`DelayOnNack`](crate::middleware::DelayOnNack).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.inner.retry_after = Some(delay);
        self
    }

    /// The redelivery delay this error asks for, if any.
    pub fn retry_after_hint(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Notes the attempt counted for the delivery that failed (kept if one is noted already: the
    /// innermost count is the one its layers decided on).
    pub(crate) fn with_counted_attempt(mut self, attempt: u32) -> Self {
        self.inner.attempt.get_or_insert(attempt);
        self
    }

    /// A copy of the error without its source (whose text the message carries already): one
    /// failure of a batch handler reported for each message of the batch.
    pub(crate) fn duplicate(&self) -> Error {
        let Inner { kind, permanent, message, retry_after, attempt, .. } = &*self.inner;
        Error {
            inner: Box::new(Inner {
                kind: *kind,
                permanent: *permanent,
                message: message.clone(),
                source: None,
                retry_after: *retry_after,
                attempt: *attempt,
            }),
        }
    }

    /// The attempt a counting layer noted, if any.
    pub(crate) fn counted_attempt(&self) -> Option<u32> {
        self.inner.attempt
    }

    /// The broad kind.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether retrying cannot help (decode failures, [`Error::permanent`]).
    pub fn is_permanent(&self) -> bool {
        self.inner.permanent
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The underlying cause, if one was wrapped.
    pub fn source(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }

    /// Attempts to view the cause as a concrete error type.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.inner.source.as_ref()?.downcast_ref::<E>()
    }

    /// Converts into a boxed `std::error::Error`, for code that needs one.
    pub fn into_std(self) -> Box<dyn StdError + Send + Sync + 'static> {
        Box::new(StdWrapper(self))
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for Error {
    fn from(error: E) -> Self {
        Error::with_source(ErrorKind::Handler, error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inner.message.is_empty() {
            f.write_str(self.inner.kind.describe())
        } else if matches!(self.inner.kind, ErrorKind::Handler) {
            f.write_str(&self.inner.message)
        } else {
            write!(f, "{}: {}", self.inner.kind.describe(), self.inner.message)
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return f
                .debug_struct("Error")
                .field("kind", &self.inner.kind)
                .field("permanent", &self.inner.permanent)
                .field("message", &self.inner.message)
                .field("source", &self.inner.source)
                .finish();
        }
        // `fn main() -> millstream::Result<()>` prints this: make it readable.
        fmt::Display::fmt(self, f)?;
        let mut cause = self.inner.source.as_deref().and_then(|s| s.source());
        while let Some(c) = cause {
            write!(f, "\n  caused by: {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

struct StdWrapper(Error);

impl fmt::Debug for StdWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StdWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for StdWrapper {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.inner.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

/// The text of a caught panic's payload (`panic!("..")` gives a `&str` or a `String`).
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_cause() {
        let io = std::io::Error::other("disk on fire");
        let err: Error = io.into();
        assert_eq!(err.kind(), ErrorKind::Handler);
        assert!(!err.is_permanent());
        assert_eq!(err.to_string(), "disk on fire");
        assert!(err.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn decode_errors_are_permanent() {
        let bad = serde_json::from_str::<u32>("nope").unwrap_err();
        let err = Error::decode(bad);
        assert!(err.is_permanent());
        assert!(err.to_string().starts_with("payload does not decode: expected"), "{err}");
    }

    #[test]
    fn permanent_and_context() {
        let err = Error::permanent("bad sku").context("billing");
        assert!(err.is_permanent());
        assert_eq!(err.to_string(), "billing: bad sku");
        assert_eq!(err.into_std().to_string(), "billing: bad sku");
    }
}
