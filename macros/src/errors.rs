//! Collecting errors: every mistake is reported in one compile, each on its own token.
//!
//! An [`Errors`] must end in [`Errors::check`]: one dropped without it would lose whatever it
//! holds, so in debug builds the drop panics (as serde's `Ctxt` does), and a test run of the
//! macros finds the path that forgot.

use proc_macro2::TokenStream;
use quote::ToTokens;

/// The errors found so far.
pub(crate) struct Errors {
    /// `None` once checked.
    errors: Option<Vec<syn::Error>>,
}

impl Default for Errors {
    fn default() -> Self {
        Errors { errors: Some(Vec::new()) }
    }
}

impl Errors {
    fn list(&mut self) -> &mut Vec<syn::Error> {
        self.errors.as_mut().expect("errors recorded after `check`")
    }

    /// Records an error spanning `tokens`.
    pub(crate) fn at(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.list().push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error on `span`.
    pub(crate) fn on(&mut self, span: proc_macro2::Span, message: impl std::fmt::Display) {
        self.list().push(syn::Error::new(span, message));
    }

    /// Records an error that is already built.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.list().push(error);
    }

    /// How many errors were found so far.
    pub(crate) fn len(&self) -> usize {
        self.errors.as_ref().map_or(0, Vec::len)
    }

    /// Whether nothing went wrong so far.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the collection: `Err` holds one `compile_error!` per error, in the order they were
    /// found.
    pub(crate) fn check(mut self) -> Result<(), TokenStream> {
        let errors = self.errors.take().unwrap_or_default();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.iter().map(syn::Error::to_compile_error).collect())
        }
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        if cfg!(debug_assertions) && self.errors.is_some() && !std::thread::panicking() {
            panic!("an `Errors` was dropped without `check()`: its errors would be lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::Span;

    #[test]
    fn check_returns_every_error_in_order() {
        let mut errors = Errors::default();
        errors.on(Span::call_site(), "first");
        errors.on(Span::call_site(), "second");
        assert_eq!(errors.len(), 2);
        let out = errors.check().unwrap_err().to_string();
        let (first, second) = (out.find("first").unwrap(), out.find("second").unwrap());
        assert!(first < second, "{out}");
    }

    #[test]
    fn check_without_errors_is_ok() {
        assert!(Errors::default().check().is_ok());
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "dropped without `check()`"))]
    fn dropping_unchecked_errors_panics_in_debug_builds() {
        let mut errors = Errors::default();
        errors.on(Span::call_site(), "lost");
        drop(errors);
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "dropped without `check()`"))]
    fn dropping_an_unchecked_empty_collector_panics_too() {
        // The path that forgot `check()` would lose errors the day it records one.
        drop(Errors::default());
    }
}
