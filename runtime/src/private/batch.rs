//! What a batch handler's registration (`#[millstream::handler(batch = N)]`) calls:
//! `batch_route_N` for a batch handler taking its `Vec<T>` and `N - 1` more arguments. As with the
//! single handlers' builders, the macro passes the handler's types as explicit type arguments
//! (with the user's tokens), so that one that does not fit is reported once, on that type.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::batch::{BatchReturn, FromBatch};
use crate::codec::Codec;
use crate::router::Route;

/// The [`Route`] of a batch handler taking its `Vec<T>` and 0 more argument(s), with its batch
/// size and linger (milliseconds).
pub fn batch_route_1<F, Fut, R, T>(
    name: &'static str,
    topic: &'static str,
    handler: F,
    codec: impl Codec + Clone,
    size: usize,
    linger_ms: u64,
) -> Route
where
    F: Fn(Vec<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send,
    R: BatchReturn,
    T: DeserializeOwned + Send + 'static,
{
    Route::batch_with_codec(name, topic, handler, codec)
        .batch_size(size)
        .linger(Duration::from_millis(linger_ms))
}

/// The [`Route`] of a batch handler taking its `Vec<T>` and 1 more argument(s), with its batch
/// size and linger (milliseconds).
pub fn batch_route_2<F, Fut, R, T, E1>(
    name: &'static str,
    topic: &'static str,
    handler: F,
    codec: impl Codec + Clone,
    size: usize,
    linger_ms: u64,
) -> Route
where
    F: Fn(Vec<T>, E1) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send,
    R: BatchReturn,
    T: DeserializeOwned + Send + 'static,
    E1: FromBatch,
{
    Route::batch_with_codec(name, topic, handler, codec)
        .batch_size(size)
        .linger(Duration::from_millis(linger_ms))
}

/// The [`Route`] of a batch handler taking its `Vec<T>` and 2 more argument(s), with its batch
/// size and linger (milliseconds).
pub fn batch_route_3<F, Fut, R, T, E1, E2>(
    name: &'static str,
    topic: &'static str,
    handler: F,
    codec: impl Codec + Clone,
    size: usize,
    linger_ms: u64,
) -> Route
where
    F: Fn(Vec<T>, E1, E2) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send,
    R: BatchReturn,
    T: DeserializeOwned + Send + 'static,
    E1: FromBatch,
    E2: FromBatch,
{
    Route::batch_with_codec(name, topic, handler, codec)
        .batch_size(size)
        .linger(Duration::from_millis(linger_ms))
}

/// The [`Route`] of a batch handler taking its `Vec<T>` and 3 more argument(s), with its batch
/// size and linger (milliseconds).
pub fn batch_route_4<F, Fut, R, T, E1, E2, E3>(
    name: &'static str,
    topic: &'static str,
    handler: F,
    codec: impl Codec + Clone,
    size: usize,
    linger_ms: u64,
) -> Route
where
    F: Fn(Vec<T>, E1, E2, E3) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send,
    R: BatchReturn,
    T: DeserializeOwned + Send + 'static,
    E1: FromBatch,
    E2: FromBatch,
    E3: FromBatch,
{
    Route::batch_with_codec(name, topic, handler, codec)
        .batch_size(size)
        .linger(Duration::from_millis(linger_ms))
}
