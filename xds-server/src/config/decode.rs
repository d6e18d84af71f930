//! Typed access to a positioned YAML tree that records every problem with its location, and
//! remembers which keys were read so that everything left over is reported, never dropped.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use super::yaml::{Node, Position, Value};
use super::Diagnostic;

/// Collects errors and warnings for one file.
pub struct Report<'f> {
    pub file: &'f str,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'f> Report<'f> {
    pub fn new(file: &'f str) -> Self {
        Report {
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn diagnostic(&self, at: Position, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line: at.line,
            column: at.column,
            field: field.to_string(),
            message,
        }
    }

    pub fn error(&mut self, at: Position, field: &str, message: impl Into<String>) {
        let d = self.diagnostic(at, field, message.into());
        self.errors.push(d);
    }

    pub fn warn(&mut self, at: Position, field: &str, message: impl Into<String>) {
        let d = self.diagnostic(at, field, message.into());
        self.warnings.push(d);
    }
}

/// A mapping being decoded; keys not taken by the end are reported as ignored.
pub struct Object<'n> {
    pub path: String,
    pub position: Position,
    entries: &'n [(String, Position, Node)],
    taken: RefCell<BTreeSet<String>>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'n> Object<'n> {
    /// `node` as a mapping; reports and returns None if it is something else.
    pub fn of(node: &'n Node, path: &str, report: &mut Report) -> Option<Object<'n>> {
        match &node.value {
            Value::Mapping(entries) => Some(Object {
                path: path.to_string(),
                position: node.position,
                entries,
                taken: RefCell::new(BTreeSet::new()),
            }),
            _ if node.is_null() => Some(Object {
                path: path.to_string(),
                position: node.position,
                entries: &[],
                taken: RefCell::new(BTreeSet::new()),
            }),
            _ => {
                report.error(
                    node.position,
                    path,
                    format!("expected a mapping, found {}", node.kind_name()),
                );
                None
            }
        }
    }

    pub fn field_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`, marking it as understood. A null value counts as absent.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.taken.borrow_mut().insert(key.to_string());
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, n)| n)
            .filter(|n| !n.is_null())
    }

    /// Marks keys as understood without reading them (bookkeeping Ward has no use for).
    pub fn skip(&self, keys: &[&str]) {
        let mut taken = self.taken.borrow_mut();
        for key in keys {
            taken.insert((*key).to_string());
        }
    }

    pub fn string(&self, key: &str, report: &mut Report) -> Option<String> {
        let node = self.get(key)?;
        scalar_string(node, &self.field_path(key), report)
    }

    pub fn required_string(&self, key: &str, report: &mut Report) -> Option<String> {
        let value = self.string(key, report);
        if value.is_none() && !self.has(key) {
            report.error(
                self.position,
                &self.field_path(key),
                "required field is missing",
            );
        }
        value.filter(|v| !v.is_empty())
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, _, n)| k == key && !n.is_null())
    }

    pub fn object(&self, key: &str, report: &mut Report) -> Option<Object<'n>> {
        let node = self.get(key)?;
        Object::of(node, &self.field_path(key), report)
    }

    pub fn list(&self, key: &str, report: &mut Report) -> Vec<(String, &'n Node)> {
        let Some(node) = self.get(key) else {
            return Vec::new();
        };
        let path = self.field_path(key);
        match &node.value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{path}[{i}]"), n))
                .collect(),
            _ => {
                report.error(
                    node.position,
                    &path,
                    format!("expected a list, found {}", node.kind_name()),
                );
                Vec::new()
            }
        }
    }

    pub fn string_list(&self, key: &str, report: &mut Report) -> Vec<String> {
        self.list(key, report)
            .into_iter()
            .filter_map(|(path, n)| scalar_string(n, &path, report))
            .collect()
    }

    pub fn string_map(&self, key: &str, report: &mut Report) -> BTreeMap<String, String> {
        let Some(object) = self.object(key, report) else {
            return BTreeMap::new();
        };
        let mut map = BTreeMap::new();
        for (k, _, n) in object.entries {
            if let Some(v) = scalar_string(n, &object.field_path(k), report) {
                map.insert(k.clone(), v);
            }
        }
        object.skip_all();
        map
    }

    pub fn position_of(&self, key: &str) -> Position {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, p, _)| *p)
            .unwrap_or(self.position)
    }

    fn skip_all(&self) {
        let mut taken = self.taken.borrow_mut();
        for (k, _, _) in self.entries {
            taken.insert(k.clone());
        }
    }

    /// Reports every key nobody read: Ward does not support it, and says so.
    pub fn finish(self, report: &mut Report) {
        let taken = self.taken.borrow();
        for (key, at, _) in self.entries {
            if !taken.contains(key) {
                report.warn(
                    *at,
                    &join(&self.path, key),
                    "ignored: not supported by Ward",
                );
            }
        }
    }
}

pub fn scalar_string(node: &Node, path: &str, report: &mut Report) -> Option<String> {
    match &node.value {
        Value::Scalar { text, .. } => Some(text.clone()),
        _ => {
            report.error(
                node.position,
                path,
                format!("expected a string, found {}", node.kind_name()),
            );
            None
        }
    }
}

pub fn integer(node: &Node, path: &str, min: i64, max: i64, report: &mut Report) -> Option<i64> {
    let parsed = match &node.value {
        Value::Scalar {
            text,
            quoted: false,
        } => text.parse::<i64>().ok(),
        _ => None,
    };
    match parsed {
        Some(v) if (min..=max).contains(&v) => Some(v),
        Some(v) => {
            report.error(
                node.position,
                path,
                format!("{v} is out of range ({min}..={max})"),
            );
            None
        }
        None => {
            let shown = match &node.value {
                Value::Scalar { text, .. } => format!("`{text}`"),
                _ => node.kind_name().to_string(),
            };
            report.error(
                node.position,
                path,
                format!("expected an integer, found {shown}"),
            );
            None
        }
    }
}
