//! [`IgnoreErrors`]: treats some errors as success.

use std::fmt;
use std::sync::Arc;

use futures_core::future::BoxFuture;

use super::chain::{Middleware, Next};
use super::step::{BuiltIn, Cx, Frame, Leave, Shape, Step};
use crate::error::{Error, ErrorKind};
use crate::handler::{HandlerResult, Outputs};
use crate::message::Message;

type Predicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// Treats some errors as success: the message is acked and nothing is published.
#[derive(Clone)]
pub struct IgnoreErrors {
    predicate: Predicate,
}

impl IgnoreErrors {
    /// Ignores errors for which `predicate` is true.
    pub fn when(predicate: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        IgnoreErrors { predicate: Arc::new(predicate) }
    }

    /// Ignores errors whose kind is one of `kinds`.
    pub fn kinds(kinds: impl IntoIterator<Item = ErrorKind>) -> Self {
        let kinds: Vec<_> = kinds.into_iter().collect();
        Self::when(move |e| kinds.contains(&e.kind()))
    }
}

/// Leaving with an error it ignores, the step turns it into a success with no outputs.
impl Step for IgnoreErrors {
    fn shape(&self) -> Shape {
        Shape::default()
    }

    fn leave(&self, outcome: &mut HandlerResult, _: &Frame, _: &Cx<'_>) -> Leave {
        if let Err(error) = outcome {
            if (self.predicate)(error) {
                tracing::debug!(%error, "error ignored");
                *outcome = Ok(Outputs::new());
            }
        }
        Leave::Pass
    }
}

impl Middleware for IgnoreErrors {
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, HandlerResult> {
        next.run_step(self.clone(), message)
    }

    fn __built_in(&self) -> Option<BuiltIn> {
        Some(BuiltIn::new(self.clone()))
    }
}

impl fmt::Debug for IgnoreErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IgnoreErrors")
    }
}
