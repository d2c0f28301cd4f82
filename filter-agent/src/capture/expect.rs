//! The expected-verdicts file read by `filter-agent replay --expect`.
//!
//! UTF-8 lines `N VERDICT REASON  # description`, N the 1-based frame number across all
//! captures given, VERDICT `pass`, `drop` or `reject`, REASON any reason name
//! (`rate-limited` included), or `N skipped` for a record of a link type replay cannot
//! judge; blank lines and `#` lines are ignored. JSON-lines objects
//! `{"frame":N,"verdict":"...","reason":"..."}` are accepted too (other keys ignored), so
//! `replay --format json` output is an expect file.

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, anyhow, bail};
use filter_common::{Reason, Verdict};

/// What became of one frame: judged, or skipped (a link type replay cannot judge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Judged(Verdict, Reason),
    Skipped,
}

/// `drop blocked`, `skipped`.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Judged(verdict, reason) => write!(f, "{verdict} {reason}"),
            Outcome::Skipped => f.write_str(SKIPPED),
        }
    }
}

/// The verdict name of a skipped record, in expect files and replay's output.
pub const SKIPPED: &str = "skipped";

/// One expectation: frame `frame` (1-based) gets `verdict`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub frame: usize,
    pub verdict: Outcome,
    /// 1-based line of the expect file, for error messages.
    pub line: usize,
}

pub fn parse_expect(text: &str) -> anyhow::Result<Vec<Expected>> {
    let mut expected = Vec::new();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let entry = if content.starts_with('{') {
            parse_json(content, line)
        } else {
            parse_columns(content, line)
        }
        .with_context(|| format!("line {line}: {content:?}"))?;
        if let Some(first) = seen.insert(entry.frame, line) {
            bail!(
                "line {line}: frame {} is already expected on line {first}",
                entry.frame
            );
        }
        expected.push(entry);
    }
    Ok(expected)
}

fn parse_columns(content: &str, line: usize) -> anyhow::Result<Expected> {
    let fields = content.split('#').next().unwrap_or_default();
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let (frame, verdict, reason) = match fields[..] {
        [frame, verdict @ SKIPPED] => (frame, verdict, None),
        [frame, verdict, reason] => (frame, verdict, Some(reason)),
        _ => bail!(
            "expected `N VERDICT REASON  # description`, found {} fields",
            fields.len()
        ),
    };
    let frame = frame
        .parse()
        .map_err(|_| anyhow!("frame number {frame:?} is not a positive integer"))?;
    checked(frame, verdict, reason, line)
}

fn parse_json(content: &str, line: usize) -> anyhow::Result<Expected> {
    let value: serde_json::Value = serde_json::from_str(content).context("invalid JSON")?;
    let field = |name: &str| {
        value
            .get(name)
            .ok_or_else(|| anyhow!("missing key {name:?}"))
    };
    let frame = field("frame")?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| anyhow!("\"frame\" is not a positive integer"))?;
    let text = |name: &str| {
        field(name)?
            .as_str()
            .ok_or_else(|| anyhow!("{name:?} is not a string"))
    };
    let verdict = text("verdict")?;
    // A skipped record has no reason (null in replay's output).
    let reason = match verdict {
        SKIPPED => None,
        _ => Some(text("reason")?),
    };
    checked(frame, verdict, reason, line)
}

fn checked(
    frame: usize,
    verdict: &str,
    reason: Option<&str>,
    line: usize,
) -> anyhow::Result<Expected> {
    if frame == 0 {
        bail!("frame numbers start at 1");
    }
    if verdict == SKIPPED {
        return Ok(Expected {
            frame,
            verdict: Outcome::Skipped,
            line,
        });
    }
    let Some(verdict_value) = Verdict::from_name(verdict) else {
        let names: Vec<&str> = Verdict::ALL.iter().map(|v| v.name()).collect();
        bail!(
            "verdict {verdict:?} is not one of {}, {SKIPPED}",
            names.join(", ")
        );
    };
    let reason = reason.unwrap_or_default();
    let Some(reason_value) = Reason::from_name(reason) else {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        bail!("unknown reason {reason:?} (one of {})", names.join(", "));
    };
    Ok(Expected {
        frame,
        verdict: Outcome::Judged(verdict_value, reason_value),
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(frame: usize, verdict: &str, reason: &str, line: usize) -> Expected {
        let verdict = match verdict {
            SKIPPED => Outcome::Skipped,
            _ => Outcome::Judged(
                Verdict::from_name(verdict).unwrap(),
                Reason::from_name(reason).unwrap(),
            ),
        };
        Expected {
            frame,
            verdict,
            line,
        }
    }

    #[test]
    fn parses_columns_comments_and_json_lines() {
        let text = "# header\n\
                    \n\
                    1 drop blocked  # residential SYN to :25 # with a second hash\n\
                    2 pass not-ip\n\
                    \t3   pass   relay   \n\
                    5 reject blocked\n\
                    6 drop rate-limited  # over the relay limit\n\
                    {\"frame\":4,\"verdict\":\"pass\",\"reason\":\"malformed\",\"note\":\"x\"}\n\
                    {\"reason\":\"port\",\"verdict\":\"pass\",\"frame\":10}\n\
                    11 skipped  # a LINKTYPE_NULL record\n\
                    {\"frame\":12,\"verdict\":\"skipped\",\"reason\":null}\n";
        assert_eq!(
            parse_expect(text).unwrap(),
            [
                expected(1, "drop", "blocked", 3),
                expected(2, "pass", "not-ip", 4),
                expected(3, "pass", "relay", 5),
                expected(5, "reject", "blocked", 6),
                expected(6, "drop", "rate-limited", 7),
                expected(4, "pass", "malformed", 8),
                expected(10, "pass", "port", 9),
                expected(11, "skipped", "", 10),
                expected(12, "skipped", "", 11),
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("1 drop blocked\n\n2 pass\n", "line 3", "found 2 fields"),
            ("# x\nx drop blocked\n", "line 2", "not a positive integer"),
            ("0 drop blocked\n", "line 1", "start at 1"),
            (
                "1 refuse blocked\n",
                "line 1",
                "not one of pass, drop, reject, skipped",
            ),
            ("1 drop spam\n", "line 1", "unknown reason"),
            (
                "1 drop blocked\n1 pass port\n",
                "line 2",
                "already expected on line 1",
            ),
            (
                "{\"frame\":1,\"verdict\":\"drop\"}\n",
                "line 1",
                "missing key \"reason\"",
            ),
            (
                "{\"frame\":\"1\"}\n",
                "line 1",
                "\"frame\" is not a positive integer",
            ),
            ("{\"frame\":1,\n", "line 1", "invalid JSON"),
        ];
        for (text, line, message) in cases {
            let error = format!("{:#}", parse_expect(text).unwrap_err());
            assert!(error.starts_with(line), "{text:?}: {error}");
            assert!(error.contains(message), "{text:?}: {error}");
        }
    }
}
