//! What a stream subscribed to, per type: everything, or a set of names shared with every
//! other stream subscribed to the same names.
//!
//! Most proxies of a mesh want the same endpoints (one per cluster they all receive), so a
//! set of names per stream would cost each connected proxy a copy of the cluster list
//! (~34 KB per proxy in a 1,000-service mesh, as a `BTreeSet`). Sets are interned instead:
//! equal sets are one allocation.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Which resources of a type a proxy wants.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Subscription {
    #[default]
    Wildcard,
    Names(NameSet),
}

impl Subscription {
    pub fn wants(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(names) => names.contains(name),
        }
    }
}

/// A sorted, duplicate-free, interned set of resource names.
#[derive(Debug, Clone)]
pub struct NameSet(Arc<[Arc<str>]>);

impl PartialEq for NameSet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Default for NameSet {
    fn default() -> Self {
        NameSet::new(Vec::new())
    }
}

type Interned = HashMap<u64, Vec<Weak<[Arc<str>]>>>;

fn interned() -> &'static Mutex<Interned> {
    static SETS: OnceLock<Mutex<Interned>> = OnceLock::new();
    SETS.get_or_init(Default::default)
}

impl NameSet {
    pub fn new(mut names: Vec<Arc<str>>) -> Self {
        names.sort_unstable();
        names.dedup();
        let mut hasher = DefaultHasher::new();
        names.hash(&mut hasher);
        let key = hasher.finish();
        let mut sets = interned().lock().expect("name set interner");
        let bucket = sets.entry(key).or_default();
        bucket.retain(|weak| weak.strong_count() > 0);
        if let Some(shared) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|set| **set == *names)
        {
            return NameSet(shared);
        }
        let set: Arc<[Arc<str>]> = names.into();
        bucket.push(Arc::downgrade(&set));
        // Drop the buckets of sets nobody holds any more, now and then.
        if sets.len() > 64 && sets.len().is_power_of_two() {
            sets.retain(|_, bucket| bucket.iter().any(|w| w.strong_count() > 0));
        }
        NameSet(set)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    /// This set with `add` added and `remove` removed, and the names of `add` it did not
    /// have. `self` is unchanged (it may be shared).
    pub fn changed(&self, add: &[Arc<str>], remove: &[String]) -> (NameSet, Vec<Arc<str>>) {
        let new: Vec<Arc<str>> = add.iter().filter(|n| !self.contains(n)).cloned().collect();
        if new.is_empty() && !remove.iter().any(|n| self.contains(n)) {
            return (self.clone(), new);
        }
        let remove: HashSet<&str> = remove.iter().map(String::as_str).collect();
        let names = self
            .0
            .iter()
            .chain(&new)
            .filter(|n| !remove.contains(&***n))
            .cloned()
            .collect();
        (NameSet::new(names), new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn equal_sets_share_one_allocation() {
        let a = NameSet::new(names(&["b", "a", "c", "a"]));
        let b = NameSet::new(names(&["c", "b", "a"]));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a.0.len(), 3);
        assert!(a.contains("a") && a.contains("c") && !a.contains("d"));
        let (grown, new) = a.changed(&names(&["d", "a"]), &[]);
        assert_eq!(new, names(&["d"]));
        assert!(grown.contains("d"));
        assert!(!a.contains("d"), "the shared set is unchanged");
        let (shrunk, new) = grown.changed(&[], &["d".to_string()]);
        assert!(new.is_empty());
        assert!(Arc::ptr_eq(&shrunk.0, &a.0), "back to the interned set");
        let (same, _) = a.changed(&names(&["a"]), &["zz".to_string()]);
        assert!(Arc::ptr_eq(&same.0, &a.0));
    }
}
