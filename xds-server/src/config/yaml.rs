//! A YAML tree that remembers where every node came from, built from yaml-rust2's event
//! parser. serde-style deserializers lose positions and accept duplicate keys; users need
//! both: errors that point at a line, and a duplicate key refused rather than one value kept.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar; `quoted` scalars are always strings, plain ones follow the YAML 1.2 core schema.
    Scalar {
        text: String,
        quoted: bool,
    },
    Sequence(Vec<Node>),
    /// Keys in document order, with their own positions.
    Mapping(Vec<(String, Position, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub position: Position,
}

/// A problem found while parsing, before any kind is decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseProblem {
    pub position: Position,
    pub field: String,
    pub message: String,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
        }
    }
}

fn position(mark: Marker) -> Position {
    // yaml-rust2 counts columns from 0.
    Position {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

enum Frame {
    Sequence(Position, Vec<Node>),
    Mapping {
        position: Position,
        entries: Vec<(String, Position, Node)>,
        pending_key: Option<(String, Position)>,
        path: String,
    },
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    problems: Vec<ParseProblem>,
    in_document: bool,
    document_had_root: bool,
}

impl TreeBuilder {
    fn current_path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Sequence(_, items) => path.push_str(&format!("[{}]", items.len())),
                Frame::Mapping {
                    pending_key: Some((k, _)),
                    ..
                } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                Frame::Mapping { .. } => {}
            }
        }
        path
    }

    fn push_node(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                self.documents.push(node);
                self.document_had_root = true;
            }
            Some(Frame::Sequence(_, items)) => items.push(node),
            Some(Frame::Mapping {
                entries,
                pending_key,
                path,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match &node.value {
                        Value::Scalar { text, .. } => text.clone(),
                        _ => {
                            self.problems.push(ParseProblem {
                                position: node.position,
                                field: path.clone(),
                                message: "mapping keys must be scalars".to_string(),
                            });
                            String::from("<complex key>")
                        }
                    };
                    if let Some((_, first, _)) = entries.iter().find(|(k, _, _)| *k == key) {
                        let field = if path.is_empty() {
                            key.clone()
                        } else {
                            format!("{path}.{key}")
                        };
                        self.problems.push(ParseProblem {
                            position: node.position,
                            field,
                            message: format!(
                                "duplicate key `{key}` (first at line {}); YAML allows each key once per mapping",
                                first.line
                            ),
                        });
                    }
                    *pending_key = Some((key, node.position));
                }
                Some((key, key_position)) => entries.push((key, key_position, node)),
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = position(mark);
        match event {
            Event::DocumentStart => {
                self.in_document = true;
                self.document_had_root = false;
            }
            Event::DocumentEnd => {
                if self.in_document && !self.document_had_root {
                    self.documents.push(Node {
                        value: Value::Scalar {
                            text: String::new(),
                            quoted: false,
                        },
                        position: at,
                    });
                }
                self.in_document = false;
            }
            Event::Scalar(text, style, _, _) => self.push_node(Node {
                value: Value::Scalar {
                    text,
                    quoted: style != TScalarStyle::Plain,
                },
                position: at,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Sequence(at, Vec::new())),
            Event::SequenceEnd => {
                if let Some(Frame::Sequence(position, items)) = self.stack.pop() {
                    self.push_node(Node {
                        value: Value::Sequence(items),
                        position,
                    });
                }
            }
            Event::MappingStart(..) => {
                let path = self.current_path();
                self.stack.push(Frame::Mapping {
                    position: at,
                    entries: Vec::new(),
                    pending_key: None,
                    path,
                })
            }
            Event::MappingEnd => {
                if let Some(Frame::Mapping {
                    position, entries, ..
                }) = self.stack.pop()
                {
                    // The parser marks a block mapping's start after its first key; the first
                    // key is where a user sees the mapping begin.
                    let position = entries.first().map(|(_, p, _)| *p).unwrap_or(position);
                    self.push_node(Node {
                        value: Value::Mapping(entries),
                        position,
                    });
                }
            }
            Event::Alias(_) => {
                self.problems.push(ParseProblem {
                    position: at,
                    field: self.current_path(),
                    message: "YAML aliases are not supported by Ward; write the value out"
                        .to_string(),
                });
                self.push_node(Node {
                    value: Value::Scalar {
                        text: String::new(),
                        quoted: false,
                    },
                    position: at,
                });
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

/// Parses a multi-document YAML text. A syntax error is returned alone (nothing after it can
/// be trusted); duplicate keys and aliases are returned as problems beside the documents.
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

    #[test]
    fn positions_are_one_based() {
        let (docs, problems) = parse_documents("a: 1\nb:\n  c: x\n").unwrap();
        assert!(problems.is_empty());
        let Value::Mapping(entries) = &docs[0].value else {
            panic!()
        };
        assert_eq!(entries[1].1, Position { line: 2, column: 1 });
        let Value::Mapping(inner) = &entries[1].2.value else {
            panic!()
        };
        assert_eq!(inner[0].1, Position { line: 3, column: 3 });
        assert_eq!(inner[0].2.position, Position { line: 3, column: 6 });
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_lines() {
        let (_, problems) = parse_documents("spec:\n  x: 1\n  y: 2\n  x: 3\n").unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].position.line, 4);
        assert_eq!(problems[0].field, "spec.x");
        assert!(
            problems[0].message.contains("first at line 2"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let error = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(error.position.line >= 1);
        assert!(error.message.starts_with("invalid YAML"));
    }

    #[test]
    fn multiple_documents_and_empty_ones() {
        let (docs, _) = parse_documents("a: 1\n---\n# only a comment\n---\nb: 2\n").unwrap();
        let non_null: Vec<_> = docs.iter().filter(|d| !d.is_null()).collect();
        assert_eq!(non_null.len(), 2);
    }
}
