//! A YAML document tree that remembers where every node came from, so every error can name
//! the line and column of the field it is about.
use std::{collections::HashMap, fmt};

use saphyr_parser::{Event, Parser, ScalarStyle};

/// A position in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar; `plain` scalars (unquoted, not block) may be null, booleans or numbers.
    Scalar {
        text: String,
        plain: bool,
    },
    Sequence(Vec<Node>),
    /// Keys in document order.
    Mapping(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
}

impl Node {
    /// Whether this is YAML's null (`null`, `~`, or nothing).
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Mapping(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node of `key` in a mapping (where the field name is written).
    pub fn key(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Mapping(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, _)| k),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The position of the field at `path` (`spec.servers[1].port`), or of the deepest
    /// existing ancestor: a missing field is reported where its parent is.
    pub fn mark_of(&self, path: &str) -> Mark {
        let mut node = self;
        let mut mark = self.mark;
        for segment in path_segments(path) {
            let next = match (&segment, &node.value) {
                (Segment::Key(key), Value::Mapping(_)) => {
                    node.key(key).map(|k| (k.mark, node.get(key)))
                }
                (Segment::Index(i), Value::Sequence(items)) => {
                    items.get(*i).map(|n| (n.mark, Some(n)))
                }
                _ => None,
            };
            match next {
                Some((m, Some(child))) => {
                    mark = m;
                    node = child;
                }
                Some((m, None)) => return m,
                None => return mark,
            }
        }
        mark
    }
}

#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[2].c` into keys and indexes.
fn path_segments(path: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            segments.push(Segment::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                segments.push(Segment::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    segments
}

/// A syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
}

enum Frame {
    Sequence {
        items: Vec<Node>,
        mark: Mark,
        anchor: usize,
    },
    Mapping {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        mark: Mark,
        anchor: usize,
    },
}

/// Parses every document of `text`. Empty documents are left out.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut documents = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| SyntaxError {
            mark: Mark {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_owned(),
        })?;
        let mark = Mark {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        let complete = match event {
            Event::DocumentStart(_) => {
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take().filter(|n| !n.is_null()) {
                    documents.push(node);
                }
                None
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, ScalarStyle::Plain);
                let node = Node {
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                    mark,
                };
                remember(&mut anchors, anchor, &node);
                Some(node)
            }
            Event::Alias(id) => Some(anchors.get(&id).cloned().ok_or(SyntaxError {
                mark,
                message: format!("alias to an unknown anchor (id {id})"),
            })?),
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Sequence {
                    items: Vec::new(),
                    mark,
                    anchor,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Mapping {
                    entries: Vec::new(),
                    key: None,
                    mark,
                    anchor,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Sequence {
                    items,
                    mark,
                    anchor,
                }) => {
                    let node = Node {
                        value: Value::Sequence(items),
                        mark,
                    };
                    remember(&mut anchors, anchor, &node);
                    Some(node)
                }
                Some(Frame::Mapping {
                    entries,
                    mark,
                    anchor,
                    ..
                }) => {
                    let node = Node {
                        value: Value::Mapping(entries),
                        mark,
                    };
                    remember(&mut anchors, anchor, &node);
                    Some(node)
                }
                None => None,
            },
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
        };
        if let Some(node) = complete {
            match stack.last_mut() {
                Some(Frame::Sequence { items, .. }) => items.push(node),
                Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                    Some(k) => entries.push((k, node)),
                    None => *key = Some(node),
                },
                None => root = Some(node),
            }
        }
    }
    Ok(documents)
}

fn remember(anchors: &mut HashMap<usize, Node>, anchor: usize, node: &Node) {
    if anchor != 0 {
        anchors.insert(anchor, node.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Node> {
        parse_documents(text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn nodes_carry_their_line_and_column() {
        let docs = parse("kind: Gateway\nspec:\n  servers:\n  - port:\n      number: 80\n");
        let doc = &docs[0];
        assert_eq!(doc.mark_of("kind"), Mark { line: 1, column: 1 });
        assert_eq!(
            doc.mark_of("spec.servers[0].port.number"),
            Mark { line: 5, column: 7 }
        );
        // A missing field is reported at its nearest existing ancestor.
        assert_eq!(
            doc.mark_of("spec.servers[0].hosts"),
            Mark { line: 4, column: 5 }
        );
        assert_eq!(doc.mark_of("spec.servers[3]"), Mark { line: 3, column: 3 });
    }

    #[test]
    fn documents_split_and_empty_ones_vanish() {
        let docs = parse("---\na: 1\n---\n---\nb: [x, 'y']\n...\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[1].get("b").map(|n| n.mark),
            Some(Mark { line: 5, column: 4 })
        );
        let Some(Value::Sequence(items)) = docs[1].get("b").map(|n| &n.value) else {
            panic!()
        };
        assert_eq!(
            items[1].value,
            Value::Scalar {
                text: "y".into(),
                plain: false
            }
        );
    }

    #[test]
    fn anchors_and_aliases_resolve() {
        let docs = parse("a: &p {x: 1}\nb: *p\n");
        assert_eq!(
            docs[0]
                .get("b")
                .and_then(|b| b.get("x"))
                .and_then(Node::as_str),
            Some("1")
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse_documents("a: [1, 2\nb: c\n")
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert!(err.mark.line >= 2, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn path_segments_split_keys_and_indexes() {
        assert_eq!(
            path_segments("spec.http[2].match[0].uri"),
            vec![
                Segment::Key("spec"),
                Segment::Key("http"),
                Segment::Index(2),
                Segment::Key("match"),
                Segment::Index(0),
                Segment::Key("uri")
            ]
        );
    }
}
