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

/// Bounds on what one file may hold, so a small file cannot take the daemon's memory or
/// stack: aliases are expanded into copies, so "billion laughs" (anchors of aliases of
/// anchors) grows exponentially without the node budget.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Nodes in a file, every alias counted as the nodes it copies.
    pub nodes: usize,
    /// Sequences and mappings open at once (Istio objects nest about 10 deep).
    pub depth: usize,
    /// Documents in a file.
    pub documents: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        nodes: 1 << 20,
        depth: 64,
        documents: 10_000,
    };
}

enum Frame {
    Sequence {
        items: Vec<Node>,
        mark: Mark,
        anchor: usize,
        /// The node count when the sequence opened: its size is the difference at its end.
        opened_at: usize,
    },
    Mapping {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        mark: Mark,
        anchor: usize,
        opened_at: usize,
    },
}

/// Parses every document of `text` within [`Limits::DEFAULT`]. Empty documents are left out.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    parse_documents_within(text, Limits::DEFAULT)
}

/// [`parse_documents`] within `limits`; exceeding one is an error at the node that did.
pub fn parse_documents_within(text: &str, limits: Limits) -> Result<Vec<Node>, SyntaxError> {
    let mut documents = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // Each anchor's node and its size in nodes (what an alias to it adds).
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let mut parser = Parser::new_from_str(text);
    let over = |mark: Mark, message: String| SyntaxError { mark, message };
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
        if nodes > limits.nodes {
            let message = format!("more than {} nodes in one file", limits.nodes);
            return Err(over(mark, message));
        }
        if stack.len() > limits.depth {
            let message = format!(
                "nested more than {} levels deep (sequences and mappings)",
                limits.depth
            );
            return Err(over(mark, message));
        }
        let complete = match event {
            Event::DocumentStart(_) => {
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take().filter(|n| !n.is_null()) {
                    if documents.len() == limits.documents {
                        let message =
                            format!("more than {} documents in one file", limits.documents);
                        return Err(over(node.mark, message));
                    }
                    documents.push(node);
                }
                None
            }
            Event::Scalar(text, style, anchor, _tag) => {
                nodes += 1;
                let plain = matches!(style, ScalarStyle::Plain);
                let node = Node {
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                    mark,
                };
                remember(&mut anchors, anchor, &node, 1);
                Some(node)
            }
            Event::Alias(id) => {
                let (node, size) = anchors
                    .get(&id)
                    .ok_or_else(|| over(mark, format!("alias to an unknown anchor (id {id})")))?;
                nodes = nodes.saturating_add(*size);
                if nodes > limits.nodes {
                    let message = format!(
                        "the file expands to more than {} nodes (aliases count as copies of what they name)",
                        limits.nodes
                    );
                    return Err(over(mark, message));
                }
                Some(node.clone())
            }
            Event::SequenceStart(anchor, _) => {
                nodes += 1;
                stack.push(Frame::Sequence {
                    items: Vec::new(),
                    mark,
                    anchor,
                    opened_at: nodes,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                nodes += 1;
                stack.push(Frame::Mapping {
                    entries: Vec::new(),
                    key: None,
                    mark,
                    anchor,
                    opened_at: nodes,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Sequence {
                    items,
                    mark,
                    anchor,
                    opened_at,
                }) => {
                    let node = Node {
                        value: Value::Sequence(items),
                        mark,
                    };
                    remember(&mut anchors, anchor, &node, nodes + 1 - opened_at);
                    Some(node)
                }
                Some(Frame::Mapping {
                    entries,
                    mark,
                    anchor,
                    opened_at,
                    ..
                }) => {
                    let node = Node {
                        value: Value::Mapping(entries),
                        mark,
                    };
                    remember(&mut anchors, anchor, &node, nodes + 1 - opened_at);
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

fn remember(anchors: &mut HashMap<usize, (Node, usize)>, anchor: usize, node: &Node, size: usize) {
    if anchor != 0 {
        anchors.insert(anchor, (node.clone(), size));
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

    /// "Billion laughs": nine levels of ten aliases each would expand to 10^9 nodes.
    fn laughs(levels: usize) -> String {
        let mut text = String::from("a0: &a0 [lol]\n");
        for level in 1..=levels {
            let aliases = vec![format!("*a{}", level - 1); 10].join(", ");
            text += &format!("a{level}: &a{level} [{aliases}]\n");
        }
        text
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let started = std::time::Instant::now();
        let err = parse_documents(&laughs(9))
            .err()
            .unwrap_or_else(|| panic!("a billion laughs parsed"));
        assert!(err.message.contains("expands to more than"), "{err:?}");
        assert!(err.mark.line >= 6, "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // A few levels stay well inside the budget, and aliases still resolve.
        let docs = parse(&laughs(3));
        let Some(Value::Sequence(items)) = docs[0].get("a3").map(|n| &n.value) else {
            panic!("{docs:?}")
        };
        assert_eq!(items.len(), 10);
    }

    #[test]
    fn nesting_documents_and_nodes_are_bounded() {
        // Flow nesting is refused by the parser itself; block nesting by the depth bound.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_documents(&deep).is_err());
        let block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let err = parse_documents(&block)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert!(err.message.contains("levels deep"), "{err:?}");
        assert_eq!(err.mark.line, 65, "{err:?}");
        let nested_ok = format!("{}x{}", "[".repeat(60), "]".repeat(60));
        assert_eq!(parse(&nested_ok).len(), 1);

        let limits = Limits {
            documents: 3,
            ..Limits::DEFAULT
        };
        let err = parse_documents_within("a: 1\n---\nb: 2\n---\nc: 3\n---\nd: 4\n", limits)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert!(err.message.contains("more than 3 documents"), "{err:?}");
        assert_eq!(err.mark.line, 7, "{err:?}");

        let limits = Limits {
            nodes: 100,
            ..Limits::DEFAULT
        };
        let wide = format!("[{}]", vec!["x"; 200].join(","));
        let err = parse_documents_within(&wide, limits)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert!(err.message.contains("more than 100 nodes"), "{err:?}");
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
