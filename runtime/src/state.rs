//! Shared application state: a map from type to value, filled with `.state(value)` and read by the
//! [`State<T>`](crate::State) extractor.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Application state values, one per type.
///
/// Handlers ask for a value with `State<T>`; the lookup happens once, when the handler is added to
/// a router, so a missing value is an error at start-up rather than on the first message.
#[derive(Clone, Default)]
pub struct StateMap {
    values: HashMap<TypeId, Entry>,
}

#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    type_name: &'static str,
}

impl StateMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`, replacing a previous value of the same type (returned, if any).
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        let entry = Entry { value: Arc::new(value), type_name: std::any::type_name::<T>() };
        let old = self.values.insert(TypeId::of::<T>(), entry)?;
        old.value.downcast_ref::<T>().cloned()
    }

    /// The value of type `T`, if provided.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get(&TypeId::of::<T>())?.value.downcast_ref::<T>()
    }

    /// Whether a value of type `T` is present.
    pub fn contains<T: 'static>(&self) -> bool {
        self.values.contains_key(&TypeId::of::<T>())
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.values.values().map(|e| e.type_name).collect();
        names.sort_unstable();
        f.debug_set().entries(names).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_type() {
        let mut map = StateMap::new();
        assert!(map.insert(5_u32).is_none());
        assert_eq!(map.insert(6_u32), Some(5));
        map.insert(String::from("db"));
        assert_eq!(map.get::<u32>(), Some(&6));
        assert_eq!(map.get::<String>().map(String::as_str), Some("db"));
        assert!(map.get::<u64>().is_none());
        assert_eq!(format!("{map:?}"), r#"{"alloc::string::String", "u32"}"#);
    }
}
