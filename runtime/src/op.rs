//! [`OpFuture`]: the future of a backend operation (publish, ack, nack, close, a store lookup),
//! either already complete (no allocation: the in-memory fast path) or boxed (network backends).
//! Re-exported as [`pubsub::OpFuture`](crate::pubsub::OpFuture).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;

use crate::error::Result;

/// The future of a publish, ack, nack or close: ready at once, or boxed.
#[must_use = "futures do nothing unless awaited"]
pub struct OpFuture<'a, T = ()> {
    inner: OpInner<'a, T>,
}

enum OpInner<'a, T> {
    Ready(Option<Result<T>>),
    Boxed(BoxFuture<'a, Result<T>>),
}

impl<'a, T> OpFuture<'a, T> {
    /// An already finished operation; allocates nothing.
    pub fn ready(result: Result<T>) -> Self {
        OpFuture { inner: OpInner::Ready(Some(result)) }
    }

    /// An operation still to run.
    pub fn boxed(future: impl Future<Output = Result<T>> + Send + 'a) -> Self {
        OpFuture { inner: OpInner::Boxed(Box::pin(future)) }
    }

    /// Whether the operation has already finished (nothing to await).
    pub fn is_ready(&self) -> bool {
        matches!(self.inner, OpInner::Ready(_))
    }
}

impl<T> Future for OpFuture<'_, T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        // `OpInner` is `Unpin`: `Option<Result<T>>` is only moved out, and the boxed future is pinned.
        let this = self.get_mut();
        match &mut this.inner {
            OpInner::Ready(result) => Poll::Ready(result.take().expect("OpFuture polled after completion")),
            OpInner::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> Unpin for OpFuture<'_, T> {}

impl<T> fmt::Debug for OpFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_ready() { "OpFuture(ready)" } else { "OpFuture(pending)" })
    }
}
