//! Item lines: lines that are each one entry of a block sequence holding a short scalar
//! of address characters (`      - "192.0.2.0/24"   # CGNAT pool`). They are nearly all
//! of a large policy's text, and the YAML parser reads about 40 MB a second: a million
//! prefixes took it most of a second. So [`splice`] replaces each run of item lines of one
//! indentation with a single item line holding [`MARKER`] (plain), the parser reads the short text
//! that is left, and the tree builder takes the run's entries from the lines themselves
//! where the parser reports the marker.
//!
//! This is exact. An item line is an entry of a block sequence wherever an entry may
//! start, and the next item line of the same indentation is then the next entry of the
//! same sequence (a scalar of these characters cannot continue onto a line no deeper
//! than its `-`, nor open a mapping: a plain one never ends in `:`). So the marker line,
//! which stands where the run's first line was, is read as an entry exactly when every
//! line of the run would have been, and the parser leaves it in the state the run would
//! have. Where the marker is read as anything but a scalar of its own (inside a block or
//! quoted scalar, continued by the next line as the run's last plain scalar would have
//! been, in a flow collection, as a key), the builder notices and the whole text is
//! parsed as written.

use std::ops::Range;

/// The text of the stand-in entry: a private-use character, and a text that holds one is
/// never spliced.
pub const MARKER: &str = "\u{E000}";

/// The scalar of an item line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item<'s> {
    pub text: &'s str,
    pub plain: bool,
    /// 1-based column of the scalar (of its opening quote when quoted).
    pub column: u32,
}

/// The entry of `line` (with or without its line break) and the line's indentation, if
/// it is an item line: spaces, `-`, spaces, a scalar of hex digits, `.`, `:` and `/`
/// (plain, or in matching quotes), then spaces and perhaps a comment after a space.
pub fn item(line: &str) -> Option<(usize, Item<'_>)> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let bytes = line.as_bytes();
    let indent = bytes.iter().take_while(|&&b| b == b' ').count();
    let after_dash = indent + 1;
    if bytes.get(indent) != Some(&b'-') || bytes.get(after_dash) != Some(&b' ') {
        return None;
    }
    let start = after_dash
        + bytes[after_dash..]
            .iter()
            .take_while(|&&b| b == b' ')
            .count();
    let quote = match bytes.get(start) {
        Some(&q @ (b'"' | b'\'')) => Some(q),
        _ => None,
    };
    let text_start = start + usize::from(quote.is_some());
    let text_len = bytes[text_start..]
        .iter()
        .take_while(|&&b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/'))
        .count();
    if text_len == 0 {
        return None;
    }
    let text_end = text_start + text_len;
    let mut end = text_end;
    match quote {
        Some(q) if bytes.get(end) == Some(&q) => end += 1,
        Some(_) => return None,
        // `a:` would be a mapping's key.
        None if bytes[text_end - 1] == b':' => return None,
        None => {}
    }
    let rest = &bytes[end..];
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    let tail = &rest[spaces..];
    let fine = tail.is_empty() || (spaces > 0 && tail[0] == b'#' && !tail.contains(&b'\r'));
    fine.then(|| {
        (
            indent,
            Item {
                text: &line[text_start..text_end],
                plain: quote.is_none(),
                column: u32::try_from(start + 1).unwrap_or(u32::MAX),
            },
        )
    })
}

/// A run of item lines of one indentation, replaced by one marker line.
#[derive(Debug)]
pub struct Run {
    /// The run's bytes in the original text.
    pub bytes: Range<usize>,
    /// Its first line in the original text (1-based).
    pub first_line: u32,
    /// Its lines.
    pub lines: u32,
    /// The marker's line in the spliced text.
    pub marker_line: u32,
}

impl Run {
    /// The run's entries and their lines in the original text.
    pub fn items<'s>(&self, source: &'s str) -> impl Iterator<Item = (u32, Item<'s>)> {
        source[self.bytes.clone()]
            .split_inclusive('\n')
            .zip(self.first_line..)
            .map(|(line, number)| (number, item(line).expect("a run holds item lines").1))
    }
}

/// A text with its runs of item lines replaced by marker lines.
#[derive(Debug)]
pub struct Spliced {
    pub text: String,
    pub runs: Vec<Run>,
}

impl Spliced {
    /// The original line of `line` of the spliced text.
    pub fn original_line(&self, line: u32) -> u32 {
        // The last run before `line` gives the offset: its marker line stands for its
        // last line. (A policy with a comment between every two items has a run per item,
        // so this is one search, not a sum over the runs.)
        match self.runs.partition_point(|run| run.marker_line < line) {
            0 => line,
            before => {
                let run = &self.runs[before - 1];
                line + (run.first_line + run.lines - 1) - run.marker_line
            }
        }
    }
}

/// `source` with each run of item lines replaced by a marker line; `None` when it has no
/// item line (or holds the marker itself).
pub fn splice(source: &str) -> Option<Spliced> {
    if source.contains(MARKER) {
        return None;
    }
    let mut spliced = Spliced {
        text: String::new(),
        runs: Vec::new(),
    };
    // The open run: its indentation and start.
    let mut open: Option<(usize, Run)> = None;
    let mut offset = 0;
    let mut spliced_line = 1u32;
    let close = |open: &mut Option<(usize, Run)>, spliced: &mut Spliced, line: &mut u32| {
        if let Some((indent, mut run)) = open.take() {
            spliced.text.extend(std::iter::repeat_n(' ', indent));
            spliced.text.push_str("- ");
            spliced.text.push_str(MARKER);
            spliced.text.push('\n');
            run.marker_line = *line;
            *line += 1;
            spliced.runs.push(run);
        }
    };
    for (line, number) in source.split_inclusive('\n').zip(1u32..) {
        let end = offset + line.len();
        // A last line without a line break is left to the parser.
        let entry = line.ends_with('\n').then(|| item(line)).flatten();
        match (entry, &mut open) {
            (Some((indent, _)), Some((open_indent, run))) if indent == *open_indent => {
                run.bytes.end = end;
                run.lines += 1;
            }
            (Some((indent, _)), _) => {
                close(&mut open, &mut spliced, &mut spliced_line);
                open = Some((
                    indent,
                    Run {
                        bytes: offset..end,
                        first_line: number,
                        lines: 1,
                        marker_line: 0,
                    },
                ));
            }
            (None, _) => {
                close(&mut open, &mut spliced, &mut spliced_line);
                spliced.text.push_str(line);
                spliced_line += u32::from(line.ends_with('\n'));
            }
        }
        offset = end;
    }
    close(&mut open, &mut spliced, &mut spliced_line);
    (!spliced.runs.is_empty()).then_some(spliced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_lines() {
        let plain = |text, column| {
            Some((
                2,
                Item {
                    text,
                    plain: true,
                    column,
                },
            ))
        };
        let quoted = |text, column| {
            Some((
                2,
                Item {
                    text,
                    plain: false,
                    column,
                },
            ))
        };
        assert_eq!(item("  - 192.0.2.0/24\n"), plain("192.0.2.0/24", 5));
        assert_eq!(item("  -   10.0.0.1  # a host\n"), plain("10.0.0.1", 7));
        assert_eq!(item("  - \"2001:db8::/32\""), quoted("2001:db8::/32", 5));
        assert_eq!(item("  - '::/0' "), quoted("::/0", 5));
        for not_one in [
            "  - 2001:db8::\n",     // a mapping's key
            "  - 2001:db8:: # x\n", // so is this
            "  - 10.0.0.0/8#x\n",   // a comment needs a space before it
            "  - \"10.0.0.0/8\n",   // the quote goes on
            "  - \"10.0.0.0/8'\n",  // quotes that do not match
            "  - 10.0.0.0/8: x\n",  // a mapping
            "  - 10.0.0.0 /8\n",    // two words
            "  -10.0.0.0/8\n",      // no space after the dash
            "\t- 10.0.0.0/8\n",     // a tab
            "  - \"\"\n",           // empty
            "  - - 10.0.0.0/8\n",   // a nested sequence
            "  - 10.0.0.0/8\r\n",   // a carriage return
            "  - 10.0.0.0/8 # x\r\n",
            "  # - 10.0.0.0/8\n",
        ] {
            assert_eq!(item(not_one), None, "{not_one:?}");
        }
    }

    #[test]
    fn runs_become_one_marker_line_each() {
        let source = "a:\n  - 1.0.0.0/24\n  - 1.0.1.0/24\n    - 9.9.9.9\nb: [1]\n- 2.0.0.0/24";
        let spliced = splice(source).unwrap();
        assert_eq!(
            spliced.text,
            "a:\n  - \u{E000}\n    - \u{E000}\nb: [1]\n- 2.0.0.0/24"
        );
        let runs: Vec<_> = spliced
            .runs
            .iter()
            .map(|r| (r.first_line, r.lines, r.marker_line))
            .collect();
        assert_eq!(runs, [(2, 2, 2), (4, 1, 3)]);
        let lines: Vec<u32> = (1..=5).map(|l| spliced.original_line(l)).collect();
        assert_eq!(lines, [1, 2, 4, 5, 6]);
        let items: Vec<_> = spliced.runs[0]
            .items(source)
            .map(|(line, item)| (line, item.text))
            .collect();
        assert_eq!(items, [(2, "1.0.0.0/24"), (3, "1.0.1.0/24")]);
        assert!(splice("a: 1\n").is_none());
        assert!(splice("a:\n  - \u{E000}\n  - 1.0.0.0/24\n").is_none());
    }
}
