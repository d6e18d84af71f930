//! A JSON value as a Python (Flask) app holds it after `request.get_json()`, so the
//! exam-scheduler stand-in can print it the way the real app does: `repr()` keeps the body's
//! key order, `jsonify` sorts keys and escapes non-ASCII.
//!
//! Parsed with our own visitor rather than serde_json's `preserve_order` feature, because that
//! feature is global to the build and would change the key order of every `serde_json::Map`
//! in the crate.

use std::fmt::{self, Write};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum PyValue {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    /// Insertion order, like a Python 3.7+ dict.
    Dict(Vec<(String, PyValue)>),
}

impl<'de> Deserialize<'de> for PyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PyValueVisitor)
    }
}

struct PyValueVisitor;

impl<'de> Visitor<'de> for PyValueVisitor {
    type Value = PyValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<PyValue, E> {
        Ok(PyValue::None)
    }
    fn visit_bool<E>(self, v: bool) -> Result<PyValue, E> {
        Ok(PyValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<PyValue, E> {
        Ok(PyValue::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<PyValue, E> {
        Ok(PyValue::Int(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<PyValue, E> {
        Ok(PyValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<PyValue, E> {
        Ok(PyValue::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<PyValue, E> {
        Ok(PyValue::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PyValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(PyValue::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PyValue, A::Error> {
        let mut entries: Vec<(String, PyValue)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, PyValue>()? {
            // Python's json keeps the last value of a repeated key at the first key's place.
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = value,
                None => entries.push((key, value)),
            }
        }
        Ok(PyValue::Dict(entries))
    }
}

impl PyValue {
    /// Python's `repr()`: `{'matricola': 's123456', 'exam': 'NCS'}`.
    pub(super) fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        match self {
            PyValue::None => out.push_str("None"),
            PyValue::Bool(true) => out.push_str("True"),
            PyValue::Bool(false) => out.push_str("False"),
            PyValue::Int(i) => write!(out, "{i}").expect("write to String"),
            PyValue::Float(x) => out.push_str(&float_repr(*x)),
            PyValue::Str(s) => write_str_repr(s, out),
            PyValue::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_repr(out);
                }
                out.push(']');
            }
            PyValue::Dict(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str_repr(key, out);
                    out.push_str(": ");
                    value.write_repr(out);
                }
                out.push('}');
            }
        }
    }

    /// Flask's `jsonify` in production: compact, keys sorted, non-ASCII escaped.
    pub(super) fn to_flask_json(&self) -> String {
        self.to_json(&FLASK_JSONIFY)
    }

    /// Python's `json.dumps` (as `simplejson.dumps` with its defaults): `, ` and `: `
    /// separators, the parsed key order, non-ASCII escaped.
    pub(super) fn to_json_dumps(&self) -> String {
        self.to_json(&JSON_DUMPS)
    }

    fn to_json(&self, layout: &JsonLayout) -> String {
        let mut out = String::new();
        self.write_json(layout, &mut out);
        out
    }

    fn write_json(&self, layout: &JsonLayout, out: &mut String) {
        match self {
            PyValue::None => out.push_str("null"),
            PyValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            PyValue::Int(i) => write!(out, "{i}").expect("write to String"),
            PyValue::Float(x) => out.push_str(&float_repr(*x)),
            PyValue::Str(s) => write_json_ascii_str(s, out),
            PyValue::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(layout.item_separator);
                    }
                    item.write_json(layout, out);
                }
                out.push(']');
            }
            PyValue::Dict(entries) => {
                let mut ordered: Vec<&(String, PyValue)> = entries.iter().collect();
                if layout.sort_keys {
                    // Python sorts str by code point, which is UTF-8 byte order.
                    ordered.sort_by(|a, b| a.0.cmp(&b.0));
                }
                out.push('{');
                for (i, (key, value)) in ordered.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(layout.item_separator);
                    }
                    write_json_ascii_str(key, out);
                    out.push_str(layout.key_separator);
                    value.write_json(layout, out);
                }
                out.push('}');
            }
        }
    }
}

/// How one of Python's JSON encoders lays a value out.
struct JsonLayout {
    item_separator: &'static str,
    key_separator: &'static str,
    sort_keys: bool,
}

const FLASK_JSONIFY: JsonLayout = JsonLayout {
    item_separator: ",",
    key_separator: ":",
    sort_keys: true,
};

const JSON_DUMPS: JsonLayout = JsonLayout {
    item_separator: ", ",
    key_separator: ": ",
    sort_keys: false,
};

/// Python's `float.__repr__`: shortest round-trip digits, scientific below 1e-4 and from 1e16,
/// with a signed two-digit exponent (`1e+16`, `1e-05`). Rust's `{:?}` has the same digits and
/// thresholds but writes the exponent as `e16` / `e-5`.
fn float_repr(x: f64) -> String {
    let debug = format!("{x:?}");
    match debug.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(digits) => ('-', digits),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => debug,
    }
}

/// Python's `str.__repr__`: single quotes unless the text has `'` and no `"`.
fn write_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_python_printable(c) => out.push(c),
            c if (c as u32) < 0x100 => write!(out, "\\x{:02x}", c as u32).expect("write to String"),
            c if (c as u32) < 0x10000 => {
                write!(out, "\\u{:04x}", c as u32).expect("write to String")
            }
            c => write!(out, "\\U{:08x}", c as u32).expect("write to String"),
        }
    }
    out.push(quote);
}

/// Close to Python's `str.isprintable()`: control characters, separators other than the
/// space and the common invisible format characters are escaped.
fn is_python_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(
        c,
        '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
            | '\u{feff}'
    )
}

/// Python's `json.dumps(..., ensure_ascii=True)` string encoding.
fn write_json_ascii_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("write to String");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> PyValue {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn repr_keeps_body_order_and_python_quoting() {
        let value = parse(r#"{"matricola": "s123456","exam": "NCS"}"#);
        assert_eq!(value.repr(), "{'matricola': 's123456', 'exam': 'NCS'}");
    }

    #[test]
    fn repr_of_scalars_and_nesting() {
        let value = parse(
            r#"{"a": [1, -2.5, true, false, null], "b": {}, "c": [], "d": 1e16, "e": 0.00001, "f": 10.0}"#,
        );
        assert_eq!(
            value.repr(),
            "{'a': [1, -2.5, True, False, None], 'b': {}, 'c': [], 'd': 1e+16, 'e': 1e-05, 'f': 10.0}"
        );
    }

    #[test]
    fn repr_of_strings_matches_python() {
        let cases = [
            (r#""it's""#, r#""it's""#),
            (r#""it's \"x\"""#, r#"'it\'s "x"'"#),
            (r#""a\\b\n\t""#, r#"'a\\b\n\t'"#),
            (r#""caf\u00e9 ✅""#, "'café ✅'"),
            (r#""\u0001\u00a0\u200b""#, r#"'\x01\xa0\u200b'"#),
        ];
        for (json, expected) in cases {
            assert_eq!(parse(json).repr(), expected, "{json}");
        }
    }

    #[test]
    fn repeated_key_keeps_first_position_and_last_value() {
        assert_eq!(
            parse(r#"{"a": 1, "b": 2, "a": 3}"#).repr(),
            "{'a': 3, 'b': 2}"
        );
    }

    #[test]
    fn flask_json_sorts_keys_and_escapes_non_ascii() {
        let value = parse(
            r#"{"matricola": "s123456", "exam": "NCS", "note": "café 😀", "n": {"z": 1, "a": [0.5]}}"#,
        );
        assert_eq!(
            value.to_flask_json(),
            r#"{"exam":"NCS","matricola":"s123456","n":{"a":[0.5],"z":1},"note":"caf\u00e9 \ud83d\ude00"}"#
        );
    }
}
