//! Function names that live for the whole process: graph nodes and bag operations hold their
//! function as `&'static str` (in Rust, a task's `NAME`). Names from Python are leaked once
//! each, so a program leaks one copy per distinct function name it calls, never per call.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// `name` as a `&'static str`, the same one for every call with the same name.
pub(crate) fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}
