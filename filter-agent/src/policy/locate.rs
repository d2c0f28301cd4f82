//! A YAML tree that remembers where every node came from.
//!
//! Serde reports positions only for the first error, so the policy is read into this tree
//! and validated by hand: every semantic error can then point at its line and column.
//!
//! A list under a `prefixes` key (a group's, up to millions of items) is kept compact: its
//! items that are prefixes are stored parsed, with their positions, and only the others
//! (the errors to report) as nodes. A node per prefix would be most of the agent's memory.

use std::collections::HashMap;

use granit_parser::{Event, Marker, Parser, ScalarStyle, Span, SpannedEventReceiver};
use ipnet::IpNet;

use super::prefix::parse_prefix;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl From<Marker> for Pos {
    fn from(mark: Marker) -> Self {
        // The parser counts lines from 1 but columns from 0. A policy has far fewer than
        // 4 billion lines (the file would be larger than the agent reads).
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Pos {
            line: narrow(mark.line()),
            column: narrow(mark.col()).saturating_add(1),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub enum Value {
    /// `plain` is false for quoted and block scalars, which are never null.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
    /// A sequence under a `prefixes` key.
    Prefixes(PrefixList),
}

/// The items of a `prefixes` list: those that are prefixes, parsed, and the others.
#[derive(Clone, Debug, Default)]
pub struct PrefixList {
    /// In list order, each with its position at the same index of `positions`.
    pub prefixes: Vec<IpNet>,
    pub positions: Vec<Pos>,
    /// The items that are not a prefix (nothing, a mapping, a bad address...), in order.
    pub others: Vec<Node>,
}

impl PrefixList {
    /// Stores a scalar item that is a prefix; returns false for one that is not.
    fn push_text(&mut self, text: &str, pos: Pos) -> bool {
        match parse_prefix(text) {
            Ok(prefix) => {
                self.prefixes.push(prefix);
                self.positions.push(pos);
                true
            }
            Err(_) => false,
        }
    }

    fn push(&mut self, node: Node) {
        let parsed = match node.scalar() {
            Some(text) if !node.is_null() => self.push_text(text, node.pos),
            _ => false,
        };
        if !parsed {
            self.others.push(node);
        }
    }

    pub fn len(&self) -> usize {
        self.prefixes.len() + self.others.len()
    }

    /// The items as nodes, in list order.
    fn to_nodes(&self) -> Vec<Node> {
        let parsed = self
            .prefixes
            .iter()
            .zip(&self.positions)
            .map(|(prefix, &pos)| Node {
                pos,
                value: Value::Scalar {
                    text: prefix.to_string(),
                    plain: true,
                },
            });
        let mut nodes: Vec<Node> = parsed.chain(self.others.iter().cloned()).collect();
        nodes.sort_by_key(|node| node.pos);
        nodes
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: Node,
    pub value: Node,
}

impl Node {
    /// YAML's null: an empty value, `~` or `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) | Value::Prefixes(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// The documents of a YAML stream, or the syntax error that stopped the parser.
pub fn parse_yaml(source: &str) -> Result<Vec<Node>, (Pos, String)> {
    let mut builder = Builder::default();
    Parser::new_from_str(source)
        .load(&mut builder, true)
        .map_err(|e| (Pos::from(*e.marker()), e.info()))?;
    Ok(builder.documents)
}

enum Frame {
    Seq(Pos, usize, Vec<Node>),
    Prefixes(Pos, usize, PrefixList),
    /// The pending key waits for its value.
    Map(Pos, usize, Vec<Entry>, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Node>,
}

impl Builder {
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            // An alias may put the list where any list goes (`relays: *nets`): there it
            // is an ordinary sequence.
            let anchored = match &node.value {
                Value::Prefixes(list) => Node {
                    pos: node.pos,
                    value: Value::Seq(list.to_nodes()),
                },
                _ => node.clone(),
            };
            self.anchors.insert(anchor, anchored);
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Prefixes(_, _, list)) => list.push(node),
            Some(Frame::Map(_, _, entries, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    let mut value = node;
                    // An empty value has no place of its own; its key is where it is.
                    if value.is_null() && value.scalar() == Some("") {
                        value.pos = key.pos;
                    }
                    entries.push(Entry { key, value });
                }
            },
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, event: Event<'input>, span: Span) {
        let pos = Pos::from(span.start);
        match event {
            Event::Scalar(text, style, anchor, _) => {
                // The common case of a long list, parsed from the text the parser lends.
                if let Some(Frame::Prefixes(_, _, list)) = self.stack.last_mut()
                    && anchor == 0
                    && !span.is_empty()
                    && list.push_text(&text, pos)
                {
                    return;
                }
                let plain = style == ScalarStyle::Plain;
                // The parser reads an empty value as `~`; it is kept empty, as written.
                let text = if span.is_empty() {
                    String::new()
                } else {
                    text.into_owned()
                };
                self.finish(
                    Node {
                        pos,
                        value: Value::Scalar { text, plain },
                    },
                    anchor,
                );
            }
            Event::SequenceStart(_, anchor, _) => {
                let under_prefixes = matches!(self.stack.last(),
                    Some(Frame::Map(_, _, _, Some(key))) if key.scalar() == Some("prefixes"));
                self.stack.push(if under_prefixes {
                    Frame::Prefixes(pos, anchor, PrefixList::default())
                } else {
                    Frame::Seq(pos, anchor, Vec::new())
                });
            }
            Event::MappingStart(_, anchor, _) => {
                self.stack.push(Frame::Map(pos, anchor, Vec::new(), None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(pos, anchor, items)) => (
                        Node {
                            pos,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Prefixes(pos, anchor, list)) => (
                        Node {
                            pos,
                            value: Value::Prefixes(list),
                        },
                        anchor,
                    ),
                    Some(Frame::Map(pos, anchor, entries, _)) => (
                        Node {
                            // A mapping is where its first key is, also a flow mapping after its `{`.
                            pos: entries.first().map_or(pos, |e| e.key.pos),
                            value: Value::Map(entries),
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.finish(node, anchor);
            }
            Event::Alias(anchor) => {
                // The parser rejects unknown anchors, so only a node that contains its own
                // alias is missing here; it reads as null rather than unbalancing its mapping.
                let node = self.anchors.get(&anchor).cloned().unwrap_or(Node {
                    pos,
                    value: Value::Scalar {
                        text: String::new(),
                        plain: true,
                    },
                });
                self.finish(node, 0);
            }
            // Stream and document bounds; anchor names, comments and unresolved aliases are
            // only reported when asked for.
            _ => {}
        }
    }
}
