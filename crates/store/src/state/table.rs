//! The one way a command writes a keyed table: insert or remove a row and
//! record the [`Change`] that names it, so that no apply function can
//! change a row and forget to tell the raft crate to persist it.

use std::collections::BTreeMap;

use flotilla_types::{Network, Node, Secret, Service, Task};

use super::Change;

/// An object kept in a table of [`super::State`], keyed by its ID.
pub(crate) trait Row: Clone {
    /// The change that names the object with ID `id`.
    fn change(id: String) -> Change;
}

impl Row for Node {
    fn change(id: String) -> Change {
        Change::Node(id)
    }
}

impl Row for Service {
    fn change(id: String) -> Change {
        Change::Service(id)
    }
}

impl Row for Task {
    fn change(id: String) -> Change {
        Change::Task(id)
    }
}

impl Row for Secret {
    fn change(id: String) -> Change {
        Change::Secret(id)
    }
}

impl Row for Network {
    fn change(id: String) -> Change {
        Change::Network(id)
    }
}

/// Records that the row `id` of `T`'s table changed in place.
pub(crate) fn touched<T: Row>(id: &str, changes: &mut Vec<Change>) {
    changes.push(T::change(id.to_string()));
}

/// Inserts (or replaces) the row `id` and records the change.
pub(crate) fn insert<T: Row>(
    table: &mut BTreeMap<String, T>,
    id: &str,
    row: T,
    changes: &mut Vec<Change>,
) {
    table.insert(id.to_string(), row);
    touched::<T>(id, changes);
}

/// Removes the row `id`; records the change if there was one.
pub(crate) fn remove<T: Row>(
    table: &mut BTreeMap<String, T>,
    id: &str,
    changes: &mut Vec<Change>,
) -> Option<T> {
    let removed = table.remove(id);
    if removed.is_some() {
        touched::<T>(id, changes);
    }
    removed
}
