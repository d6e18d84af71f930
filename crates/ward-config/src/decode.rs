//! Typed access to a positioned YAML tree. Every type problem is reported with its location,
//! and every key a decoder did not read is reported when the mapping is finished, so nothing
//! in the user's file is dropped without a word.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostic::Report;
use crate::yaml::{Node, Position, Scalar, Value};

/// The warning for a field Ward reads past.
pub const IGNORED: &str = "ignored: not supported by Ward";

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A mapping being decoded; keys not read by the time of [`Object::finish`] are reported.
pub struct Object<'n> {
    pub path: String,
    pub position: Position,
    entries: &'n [(String, Position, Node)],
    taken: RefCell<BTreeSet<&'n str>>,
}

impl<'n> Object<'n> {
    /// `node` as a mapping (null counts as an empty one); reports anything else.
    pub fn of(node: &'n Node, path: &str, report: &mut Report) -> Option<Object<'n>> {
        let entries: &'n [(String, Position, Node)] = match &node.value {
            Value::Mapping(entries) => entries,
            _ if node.is_null() => &[],
            _ => {
                report.error(
                    node.position,
                    path,
                    format!("expected a mapping, found {}", node.describe()),
                );
                return None;
            }
        };
        Some(Object {
            path: path.to_string(),
            position: node.position,
            entries,
            taken: RefCell::new(BTreeSet::new()),
        })
    }

    pub fn field_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn entry(&self, key: &str) -> Option<&'n (String, Position, Node)> {
        self.entries.iter().find(|(k, _, _)| k == key)
    }

    /// The value of `key`, marking the key as understood. A null value counts as absent, as
    /// it does for Kubernetes.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        let (k, _, node) = self.entry(key)?;
        self.taken.borrow_mut().insert(k);
        Some(node).filter(|n| !n.is_null())
    }

    /// Marks keys as understood without reading them (bookkeeping Ward has no use for).
    pub fn skip(&self, keys: &[&str]) {
        for key in keys {
            let _ = self.get(key);
        }
    }

    /// Marks `key` as not understood after all, so that `finish` reports it.
    pub fn forget(&self, key: &str) {
        self.taken.borrow_mut().remove(key);
    }

    /// The mapping's keys in document order. Does not mark them as read.
    pub fn keys(&self) -> Vec<String> {
        self.entries.iter().map(|(k, _, _)| k.clone()).collect()
    }

    /// Whether `key` is set to something other than null. Does not mark it as read.
    pub fn has(&self, key: &str) -> bool {
        self.entry(key).is_some_and(|(_, _, n)| !n.is_null())
    }

    /// Where `key` is written, or where the mapping starts if it is not.
    pub fn position_of(&self, key: &str) -> Position {
        self.entry(key).map_or(self.position, |(_, p, _)| *p)
    }

    /// Reports a missing required field at the mapping that should hold it.
    pub fn missing(&self, key: &str, report: &mut Report) {
        report.error(
            self.position,
            &self.field_path(key),
            "required field is missing",
        );
    }

    /// The node of a required field; reports it missing otherwise.
    pub fn required(&self, key: &str, report: &mut Report) -> Option<&'n Node> {
        let node = self.get(key);
        if node.is_none() {
            self.missing(key, report);
        }
        node
    }

    pub fn string(&self, key: &str, report: &mut Report) -> Option<String> {
        let node = self.get(key)?;
        string(node, &self.field_path(key), report)
    }

    /// A string that must be present and not empty.
    pub fn required_string(&self, key: &str, report: &mut Report) -> Option<String> {
        let node = self.required(key, report)?;
        let value = string(node, &self.field_path(key), report)?;
        if value.is_empty() {
            report.error(node.position, &self.field_path(key), "must not be empty");
            return None;
        }
        Some(value)
    }

    pub fn object(&self, key: &str, report: &mut Report) -> Option<Object<'n>> {
        let node = self.get(key)?;
        Object::of(node, &self.field_path(key), report)
    }

    /// The items of a list with their paths (`key[i]`); absent or null is an empty list.
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
                    format!("expected a list, found {}", node.describe()),
                );
                Vec::new()
            }
        }
    }

    /// A list that needs at least one item; reports it missing or empty (a wrong type is
    /// reported by [`Object::list`] alone).
    pub fn required_list(&self, key: &str, report: &mut Report) -> Vec<(String, &'n Node)> {
        let items = self.list(key, report);
        if items.is_empty() {
            match self.get(key).map(|n| &n.value) {
                None => self.missing(key, report),
                Some(Value::Sequence(_)) => report.error(
                    self.position_of(key),
                    &self.field_path(key),
                    "at least one item is required",
                ),
                Some(_) => {}
            }
        }
        items
    }

    pub fn string_list(&self, key: &str, report: &mut Report) -> Vec<String> {
        self.list(key, report)
            .into_iter()
            .filter_map(|(path, n)| string(n, &path, report))
            .collect()
    }

    /// A `map[string]string` such as labels; a null value is the empty string, as in Go.
    pub fn string_map(&self, key: &str, report: &mut Report) -> BTreeMap<String, String> {
        let Some(object) = self.object(key, report) else {
            return BTreeMap::new();
        };
        let mut map = BTreeMap::new();
        for (k, _, node) in object.entries {
            let value = if node.is_null() {
                Some(String::new())
            } else {
                string(node, &object.field_path(k), report)
            };
            if let Some(value) = value {
                map.insert(k.clone(), value);
            }
        }
        map
    }

    /// An optional Go duration ([`go_duration`]), in milliseconds.
    pub fn duration(&self, key: &str, report: &mut Report) -> Option<u64> {
        let node = self.get(key)?;
        go_duration(node, &self.field_path(key), report)
    }

    /// Reads past each of `fields` that is present, warning where it is written that it is
    /// ignored, and why.
    pub fn ignore(&self, fields: &[(&str, &str)], report: &mut Report) {
        for (field, why) in fields {
            if self.has(field) {
                self.get(field);
                report.warn(
                    self.position_of(field),
                    &self.field_path(field),
                    format!("{IGNORED}: {why}"),
                );
            }
        }
    }

    /// Every key not read: Ward does not support it, and says so where it is written.
    pub fn finish(self, report: &mut Report) {
        let taken = self.taken.into_inner();
        for (key, at, _) in self.entries {
            if !taken.contains(key.as_str()) {
                report.warn(*at, &join(&self.path, key), IGNORED);
            }
        }
    }
}

/// A string scalar. Plain scalars that YAML reads as numbers or booleans are refused, as
/// Kubernetes refuses them, with the fix in the message.
pub fn string(node: &Node, path: &str, report: &mut Report) -> Option<String> {
    match node.scalar() {
        Some(Scalar::Str(s)) => Some(s.to_string()),
        Some(Scalar::Null) => Some(String::new()),
        Some(_) => {
            let text = node.text().unwrap_or_default();
            report.error(
                node.position,
                path,
                format!(
                    "expected a string, found {}; quote it (\"{text}\") to make it one",
                    node.describe()
                ),
            );
            None
        }
        None => {
            report.error(
                node.position,
                path,
                format!("expected a string, found {}", node.describe()),
            );
            None
        }
    }
}

/// An integer in `min..=max`.
pub fn integer(node: &Node, path: &str, min: i64, max: i64, report: &mut Report) -> Option<i64> {
    match node.scalar() {
        Some(Scalar::Int(v)) if (i128::from(min)..=i128::from(max)).contains(&v) => Some(v as i64),
        Some(Scalar::Int(_)) => {
            let text = node.text().unwrap_or_default();
            report.error(
                node.position,
                path,
                format!("{text} is out of range: expected {min} to {max}"),
            );
            None
        }
        _ => {
            report.error(
                node.position,
                path,
                format!("expected an integer, found {}", node.describe()),
            );
            None
        }
    }
}

/// A boolean scalar (`true`/`false`, unquoted).
pub fn boolean(node: &Node, path: &str, report: &mut Report) -> Option<bool> {
    match node.scalar() {
        Some(Scalar::Bool(b)) => Some(b),
        _ => {
            report.error(
                node.position,
                path,
                format!("expected true or false, found {}", node.describe()),
            );
            None
        }
    }
}

/// A number (integer or decimal) in `min..=max`; quoted numbers are accepted, as Kubernetes
/// annotations are always strings.
pub fn number(node: &Node, path: &str, min: f64, max: f64, report: &mut Report) -> Option<f64> {
    let text = node.text().unwrap_or_default();
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (min..=max).contains(&v) => Some(v),
        Ok(_) => {
            report.error(
                node.position,
                path,
                format!("{text} is out of range: expected {min} to {max}"),
            );
            None
        }
        Err(_) => {
            report.error(
                node.position,
                path,
                format!("expected a number, found {}", node.describe()),
            );
            None
        }
    }
}

/// A Go duration (`10s`, `1.5s`, `300ms`, `1m30s`), as Linkerd and Istio write them, in
/// milliseconds.
pub fn go_duration(node: &Node, path: &str, report: &mut Report) -> Option<u64> {
    let text = node.text().unwrap_or_default();
    match parse_go_duration(text) {
        Some(ms) => Some(ms),
        None => {
            report.error(
                node.position,
                path,
                format!("`{text}` is not a duration: write a number with a unit, such as 10s, 1.5s, 300ms or 1m30s"),
            );
            None
        }
    }
}

/// See [`go_duration`]; None if `text` is not one.
pub fn parse_go_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total_ms = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let per_ms = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ms += value * per_ms;
    }
    Some(total_ms.round() as u64)
}

/// A regular expression in the syntax Envoy's `safe_regex` (RE2) and Linkerd read.
pub fn regex(node: &Node, path: &str, report: &mut Report) -> Option<String> {
    let value = string(node, path, report)?;
    match regex_syntax::Parser::new().parse(&value) {
        Ok(_) => Some(value),
        Err(e) => {
            let detail = e.to_string();
            let last = detail.lines().last().unwrap_or_default().trim();
            report.error(
                node.position,
                path,
                format!(
                    "`{value}` is not a valid regular expression: {}",
                    last.strip_prefix("error: ").unwrap_or(last)
                ),
            );
            None
        }
    }
}
