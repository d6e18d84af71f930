//! A YAML tree that remembers where every node came from, built from yaml-rust2's event
//! parser. serde-style deserializers lose positions and keep one value of a duplicate key;
//! users need both: errors that point at a line, and a duplicate key refused.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `quoted` scalars (and `!!str` ones) are always strings; plain ones follow the YAML 1.2
    /// core schema, see [`Node::scalar`].
    Scalar {
        text: String,
        quoted: bool,
    },
    Sequence(Vec<Node>),
    /// Keys in document order, each with its own position.
    Mapping(Vec<(String, Position, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub position: Position,
}

/// A scalar typed by the YAML 1.2 core schema, the way Kubernetes reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    /// Saturates far beyond any range Ward accepts; messages quote the text instead.
    Int(i128),
    Float,
    Str(&'a str),
}

/// A problem found while parsing, before any kind is decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseProblem {
    pub position: Position,
    pub field: String,
    pub message: String,
}

fn core_schema(text: &str) -> Scalar<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return Scalar::Float,
        _ => {}
    }
    let radix = |prefix: &str, radix: u32| {
        let digits = text.strip_prefix(prefix)?;
        let valid = !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix));
        valid.then(|| i128::from_str_radix(digits, radix).unwrap_or(i128::MAX))
    };
    if let Some(v) = radix("0o", 8).or_else(|| radix("0x", 16)) {
        return Scalar::Int(v);
    }
    let (negative, unsigned) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        let magnitude = unsigned.parse::<i128>().unwrap_or(i128::MAX);
        return Scalar::Int(if negative { -magnitude } else { magnitude });
    }
    if is_core_float(unsigned) {
        return Scalar::Float;
    }
    Scalar::Str(text)
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the sign already stripped.
fn is_core_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty()),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

impl Node {
    pub fn scalar(&self) -> Option<Scalar<'_>> {
        match &self.value {
            Value::Scalar { text, quoted: true } => Some(Scalar::Str(text)),
            Value::Scalar {
                text,
                quoted: false,
            } => Some(core_schema(text)),
            _ => None,
        }
    }

    /// A scalar's text as written (without quotes).
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        self.scalar() == Some(Scalar::Null)
    }

    /// What the node is, for messages: `the integer 8080`, `the string "abc"`, `a list`.
    pub fn describe(&self) -> String {
        match (&self.value, self.scalar()) {
            (_, Some(Scalar::Null)) => "null".to_string(),
            (_, Some(Scalar::Bool(b))) => format!("the boolean {b}"),
            (Value::Scalar { text, .. }, Some(Scalar::Int(_))) => format!("the integer {text}"),
            (Value::Scalar { text, .. }, Some(Scalar::Float)) => format!("the number {text}"),
            (_, Some(Scalar::Str(s))) => format!("the string {s:?}"),
            (Value::Sequence(_), _) => "a list".to_string(),
            _ => "a mapping".to_string(),
        }
    }

    fn empty(position: Position) -> Node {
        Node {
            value: Value::Scalar {
                text: String::new(),
                quoted: false,
            },
            position,
        }
    }
}

fn position(mark: Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

/// `!!str` makes a plain scalar a string, as a quoted one; other tags change nothing here.
fn is_str_tag(tag: &Option<Tag>) -> bool {
    tag.as_ref()
        .is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str")
}

struct PendingKey {
    key: String,
    position: Position,
    /// A plain `<<`: the value is merged into this mapping (YAML 1.1 merge keys, which
    /// Kubernetes' YAML reader honours).
    merge: bool,
}

enum Frame {
    Sequence {
        position: Position,
        anchor: usize,
        items: Vec<Node>,
    },
    Mapping {
        position: Position,
        anchor: usize,
        entries: Vec<(String, Position, Node)>,
        merges: Vec<Node>,
        pending_key: Option<PendingKey>,
        path: String,
    },
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    problems: Vec<ParseProblem>,
    anchors: HashMap<usize, Node>,
    document_had_root: bool,
}

impl TreeBuilder {
    /// Dotted path of the node about to be added, for messages.
    fn current_path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Sequence { items, .. } => path.push_str(&format!("[{}]", items.len())),
                Frame::Mapping {
                    pending_key: Some(pending),
                    ..
                } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&pending.key);
                }
                Frame::Mapping { .. } => {}
            }
        }
        path
    }

    fn problem(&mut self, position: Position, field: String, message: String) {
        self.problems.push(ParseProblem {
            position,
            field,
            message,
        });
    }

    fn complete(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.push_node(node);
    }

    fn push_node(&mut self, node: Node) {
        let Some(frame) = self.stack.last_mut() else {
            self.documents.push(node);
            self.document_had_root = true;
            return;
        };
        let Frame::Mapping {
            entries,
            merges,
            pending_key,
            path,
            ..
        } = frame
        else {
            if let Frame::Sequence { items, .. } = frame {
                items.push(node);
            }
            return;
        };
        if let Some(pending) = pending_key.take() {
            if pending.merge {
                merges.push(node);
            } else {
                entries.push((pending.key, pending.position, node));
            }
            return;
        }
        // No key pending: this node is a key.
        let (key, merge) = match &node.value {
            Value::Scalar { text, quoted } => (text.clone(), !quoted && text == "<<"),
            _ => {
                self.problems.push(ParseProblem {
                    position: node.position,
                    field: path.clone(),
                    message: "mapping keys must be scalars".to_string(),
                });
                ("<complex key>".to_string(), false)
            }
        };
        if let Some((_, first, _)) = entries.iter().find(|(k, _, _)| *k == key) {
            self.problems.push(ParseProblem {
                position: node.position,
                field: if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                },
                message: format!(
                    "duplicate key `{key}` (first at line {}); YAML allows each key once per mapping",
                    first.line
                ),
            });
        }
        *pending_key = Some(PendingKey {
            key,
            position: node.position,
            merge,
        });
    }

    /// Applies `<<` merges: keys of the merged mappings that the mapping does not set itself.
    fn merge(
        &mut self,
        entries: &mut Vec<(String, Position, Node)>,
        merges: Vec<Node>,
        path: &str,
    ) {
        for merged in merges {
            let sources = match merged.value {
                Value::Mapping(_) => vec![merged],
                Value::Sequence(items) => items,
                _ => vec![merged],
            };
            for source in sources {
                let Value::Mapping(source_entries) = source.value else {
                    let field = if path.is_empty() {
                        "<<".to_string()
                    } else {
                        format!("{path}.<<")
                    };
                    self.problem(
                        source.position,
                        field,
                        "a merge key `<<` takes a mapping or a list of mappings".to_string(),
                    );
                    continue;
                };
                for (key, at, node) in source_entries {
                    if !entries.iter().any(|(k, _, _)| *k == key) {
                        entries.push((key, at, node));
                    }
                }
            }
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = position(mark);
        match event {
            Event::DocumentStart => self.document_had_root = false,
            Event::DocumentEnd => {
                // Keep document numbering honest: an empty document is a null one.
                if !self.document_had_root {
                    self.documents.push(Node::empty(at));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = style != TScalarStyle::Plain || is_str_tag(&tag);
                self.complete(
                    Node {
                        value: Value::Scalar { text, quoted },
                        position: at,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Sequence {
                position: at,
                anchor,
                items: Vec::new(),
            }),
            Event::SequenceEnd => {
                if let Some(Frame::Sequence {
                    position,
                    anchor,
                    items,
                }) = self.stack.pop()
                {
                    let node = Node {
                        value: Value::Sequence(items),
                        position,
                    };
                    self.complete(node, anchor);
                }
            }
            Event::MappingStart(anchor, _) => {
                let path = self.current_path();
                self.stack.push(Frame::Mapping {
                    position: at,
                    anchor,
                    entries: Vec::new(),
                    merges: Vec::new(),
                    pending_key: None,
                    path,
                })
            }
            Event::MappingEnd => {
                if let Some(Frame::Mapping {
                    position,
                    anchor,
                    mut entries,
                    merges,
                    path,
                    ..
                }) = self.stack.pop()
                {
                    // The parser marks a block mapping's start after its first key; the first
                    // key is where a user sees the mapping begin.
                    let position = entries.first().map(|(_, p, _)| *p).unwrap_or(position);
                    self.merge(&mut entries, merges, &path);
                    let node = Node {
                        value: Value::Mapping(entries),
                        position,
                    };
                    self.complete(node, anchor);
                }
            }
            Event::Alias(anchor) => {
                // The parser refuses unknown anchors, so the lookup only fails on an anchor
                // used inside its own node (a recursive structure).
                let node = match self.anchors.get(&anchor) {
                    Some(node) => node.clone(),
                    None => {
                        let field = self.current_path();
                        self.problem(
                            at,
                            field,
                            "an alias may not refer to a node that contains it".to_string(),
                        );
                        Node::empty(at)
                    }
                };
                self.push_node(node);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

/// Parses a multi-document YAML text into one node per document (empty documents are null
/// nodes). A syntax error is returned alone: nothing after it can be trusted. Duplicate keys
/// and bad merges are returned as problems beside the documents.
pub fn parse_documents(text: &str) -> Result<(Vec<Node>, Vec<ParseProblem>), ParseProblem> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| ParseProblem {
        position: position(*e.marker()),
        field: builder.current_path(),
        message: format!("invalid YAML: {}", e.info()),
    })?;
    Ok((builder.documents, builder.problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(node: &Node) -> &[(String, Position, Node)] {
        match &node.value {
            Value::Mapping(entries) => entries,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    fn one(text: &str) -> Node {
        let (mut docs, problems) = parse_documents(text).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        docs.remove(0)
    }

    #[test]
    fn positions_are_one_based() {
        let doc = one("a: 1\nb:\n  c: x\n");
        let entries = mapping(&doc);
        assert_eq!(entries[1].1, Position { line: 2, column: 1 });
        let inner = mapping(&entries[1].2);
        assert_eq!(inner[0].1, Position { line: 3, column: 3 });
        assert_eq!(inner[0].2.position, Position { line: 3, column: 6 });
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_lines() {
        let (_, problems) = parse_documents("spec:\n  x: 1\n  y: 2\n  x: 3\n").unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].position, Position { line: 4, column: 3 });
        assert_eq!(problems[0].field, "spec.x");
        assert!(problems[0]
            .message
            .starts_with("duplicate key `x` (first at line 2)"));
    }

    #[test]
    fn duplicate_keys_inside_lists_name_the_item() {
        let text = "items:\n- a: 1\n- b: 1\n  b: 2\n";
        let (_, problems) = parse_documents(text).unwrap();
        assert_eq!(problems[0].field, "items[1].b");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let error = parse_documents("a: b\nc: [1, 2\nd: 3\n").unwrap_err();
        assert!(error.position.line >= 2, "{error:?}");
        assert!(error.position.column >= 1);
        assert!(error.message.starts_with("invalid YAML"));
    }

    #[test]
    fn multiple_documents_and_empty_ones() {
        let (docs, _) = parse_documents("a: 1\n---\n# only a comment\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert!(docs[1].is_null());
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let cases = [
            ("8080", Scalar::Int(8080)),
            ("-1", Scalar::Int(-1)),
            ("+3", Scalar::Int(3)),
            ("0x1F", Scalar::Int(31)),
            ("0o17", Scalar::Int(15)),
            ("0.4", Scalar::Float),
            ("1e3", Scalar::Float),
            (".5", Scalar::Float),
            ("-.inf", Scalar::Float),
            ("true", Scalar::Bool(true)),
            ("FALSE", Scalar::Bool(false)),
            ("~", Scalar::Null),
            ("null", Scalar::Null),
            // YAML 1.1 booleans are strings in 1.2.
            ("yes", Scalar::Str("yes")),
            ("abc", Scalar::Str("abc")),
            ("1.2.3", Scalar::Str("1.2.3")),
            ("0x", Scalar::Str("0x")),
            ("-", Scalar::Str("-")),
            ("e3", Scalar::Str("e3")),
        ];
        for (text, expected) in cases {
            assert_eq!(core_schema(text), expected, "{text}");
        }
        let doc = one("a: \"8080\"\nb: '8080'\nc: !!str 8080\nd: 8080\ne:\n");
        let entries = mapping(&doc);
        for entry in &entries[..3] {
            assert_eq!(entry.2.scalar(), Some(Scalar::Str("8080")));
        }
        assert_eq!(entries[3].2.scalar(), Some(Scalar::Int(8080)));
        assert!(entries[4].2.is_null());
    }

    #[test]
    fn aliases_and_merge_keys_are_expanded() {
        let text = "base: &base {a: 1, b: 2}\ncopy: *base\nmerged:\n  <<: *base\n  b: 3\n";
        let doc = one(text);
        let entries = mapping(&doc);
        assert_eq!(mapping(&entries[1].2).len(), 2);
        let merged = mapping(&entries[2].2);
        let b = merged.iter().find(|(k, _, _)| k == "b").unwrap();
        assert_eq!(b.2.scalar(), Some(Scalar::Int(3)), "explicit keys win");
        assert!(merged.iter().any(|(k, _, _)| k == "a"));
        assert!(!merged.iter().any(|(k, _, _)| k == "<<"));
    }
}
