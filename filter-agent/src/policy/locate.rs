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

use super::{
    items::{self, MARKER, Spliced},
    prefix::parse_prefix,
};

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

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
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
#[derive(Clone, Debug, Default, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
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

/// The documents of a YAML stream, or the syntax error that stopped the parser. The
/// parser reads the text with its runs of item lines spliced out (see [`items`]), or, when
/// that does not read as the runs being where they were, the text as written.
pub fn parse_yaml(source: &str) -> Result<Vec<Node>, (Pos, String)> {
    match read_spliced(source) {
        Some(documents) => Ok(documents),
        None => parse_as_written(source),
    }
}

/// The documents, read from the text with its item lines spliced out; `None` when it has
/// none, or does not read as the runs being where they were.
fn read_spliced(source: &str) -> Option<Vec<Node>> {
    let spliced = items::splice(source)?;
    let mut builder = Builder {
        spliced: Some((source, &spliced)),
        ..Builder::default()
    };
    let read = Parser::new_from_str(&spliced.text).load(&mut builder, true);
    (read.is_ok() && !builder.misread && builder.next_run == spliced.runs.len())
        .then_some(builder.documents)
}

fn parse_as_written(source: &str) -> Result<Vec<Node>, (Pos, String)> {
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
struct Builder<'s> {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Node>,
    /// The original text and its runs, when the parser reads the spliced text.
    spliced: Option<(&'s str, &'s Spliced)>,
    /// The run the next marker stands for.
    next_run: usize,
    /// A marker was read other than as an entry of its own.
    misread: bool,
}

impl Builder<'_> {
    /// Where the parser's `mark` is in the original text.
    fn pos(&self, mark: Marker) -> Pos {
        let pos = Pos::from(mark);
        match self.spliced {
            Some((_, spliced)) => Pos {
                line: spliced.original_line(pos.line),
                ..pos
            },
            None => pos,
        }
    }

    /// Takes the entries of the run a marker stands for into the sequence being built.
    fn splice_run(&mut self) {
        let (Some((source, spliced)), Some(frame)) = (self.spliced, self.stack.last_mut()) else {
            self.misread = true;
            return;
        };
        let Some(run) = spliced.runs.get(self.next_run) else {
            self.misread = true;
            return;
        };
        self.next_run += 1;
        for (line, item) in run.items(source) {
            let pos = Pos {
                line,
                column: item.column,
            };
            let node = || Node {
                pos,
                value: Value::Scalar {
                    text: item.text.to_string(),
                    plain: item.plain,
                },
            };
            match frame {
                Frame::Prefixes(_, _, list) => {
                    if !list.push_text(item.text, pos) {
                        list.others.push(node());
                    }
                }
                Frame::Seq(_, _, items) => items.push(node()),
                Frame::Map(..) => {
                    self.misread = true;
                    return;
                }
            }
        }
    }

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

impl<'input> SpannedEventReceiver<'input> for Builder<'_> {
    fn on_event(&mut self, event: Event<'input>, span: Span) {
        let pos = self.pos(span.start);
        match event {
            Event::Scalar(text, style, anchor, _)
                if self.spliced.is_some() && text.contains(MARKER) =>
            {
                let alone = text == MARKER && style == ScalarStyle::Plain && anchor == 0;
                if alone
                    && matches!(
                        self.stack.last(),
                        Some(Frame::Seq(..) | Frame::Prefixes(..))
                    )
                {
                    self.splice_run();
                } else {
                    self.misread = true;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: 1
groups:
  - name: residential  # the big one
    smtp: block
    prefixes:
      - 100.64.0.0/10          # CGNAT
      - \"2001:db8:1000::/36\"
      -   '10.0.0.1'
      - 10.0.0.0/8
      - 2001:db8::
      - not-a-prefix
      - 10.0.0.1/8
      - {a: 1}
      - 192.0.2.0/24
    # a comment between items
      - 192.0.3.0/24

      - 192.0.4.0/24
  - name: leased
    smtp: allow
    prefixes:
    - 198.51.100.0/24
    - 198.51.101.0/24
relays:
  - 203.0.113.25
  - \"2001:db8:ffff::25\"
ports: [25]
";

    /// Splicing the item lines out reads as the text as written, and is taken for what
    /// policies hold.
    #[test]
    fn spliced_reads_as_written() {
        let example = include_str!("../../../policies/example.yaml");
        let lab = include_str!("../../../policies/lab.yaml");
        for source in [POLICY, example, lab] {
            assert_eq!(
                read_spliced(source),
                Some(parse_as_written(source).unwrap()),
                "{source}"
            );
        }
    }

    /// Where item lines are not entries of their own, the marker is noticed and the text
    /// is read as written.
    #[test]
    fn item_lines_that_are_not_entries_are_read_as_written() {
        for source in [
            // Inside a block scalar, a quoted scalar and a plain one.
            "a: |\n  - 10.0.0.0/8\n  - 10.0.1.0/24\nb: 1\n",
            "a: \"x\n  - 10.0.0.0/8\n  y\"\n",
            "a: x\n  - 10.0.0.0/8\n",
            // The run's last plain scalar goes on, on a deeper line, and after a blank one.
            "a:\n  - 10.0.0.0/8\n    10.0.1.0/24\n",
            "a:\n  - 10.0.0.0/8\n\n    10.0.1.0/24\n",
            // In a flow collection.
            "a: [\n  - 10.0.0.0/8\n]\n",
            "a: {b: \n  - 10.0.0.0/8\n}\n",
            // As a key, and after a tag or an anchor.
            "? - 10.0.0.0/8\n: x\n",
            "a: !tag\n  - 10.0.0.0/8\n",
            "a: &x\n  - 10.0.0.0/8\nb: *x\n",
        ] {
            let spliced = read_spliced(source);
            let written = parse_as_written(source);
            assert!(
                spliced.is_none() || spliced.clone().ok_or(()) == written.clone().map_err(|_| ()),
                "{source:?}: {spliced:?} / {written:?}"
            );
        }
        // A marker in the text itself: never spliced.
        assert_eq!(read_spliced("a:\n  - \u{E000}\n  - 10.0.0.0/8\n"), None);
    }
}
