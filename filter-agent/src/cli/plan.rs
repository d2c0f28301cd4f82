//! `plan` and `diff` on the command line: the changes and the traffic they move, as an
//! operator reads them before a commit.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::render::table;
use crate::{
    control::protocol::{OffenderAlerts, Plan, PolicyChange, RelayLimit, Side},
    policy::Mode,
};

/// Prefix changes and sources shown before `--json` is needed for the rest.
const SHOWN: usize = 100;

/// `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn group(side: &Side) -> &str {
    side.group.as_deref().unwrap_or("(no group)")
}

/// `residential -> leased-line: block -> allow`, or `residential: block -> allow`.
fn movement(from: &Side, to: &Side) -> String {
    let groups = if from.group == to.group {
        group(from).to_string()
    } else {
        format!("{} -> {}", group(from), group(to))
    };
    if from.outcome() == to.outcome() {
        format!("{groups}: {}", from.outcome())
    } else {
        format!("{groups}: {} -> {}", from.outcome(), to.outcome())
    }
}

/// `1h`, `90m`: how long a window is, as an operator writes it.
fn window(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

fn relay_limit(limit: &Option<RelayLimit>) -> String {
    match limit {
        Some(l) => format!("{} SYN/min (burst {})", l.syn_per_minute, l.burst),
        None => "none".into(),
    }
}

fn alerts(alerts: &Option<OffenderAlerts>) -> String {
    match alerts {
        Some(a) => format!("after {} attempts in {}", a.alert_after, a.window),
        None => "off".into(),
    }
}

/// A change other than a prefix's, as (what, how).
fn setting(change: &PolicyChange) -> Option<(&'static str, String)> {
    Some(match change {
        PolicyChange::GroupAdded {
            group,
            smtp,
            mode,
            prefixes,
        } => {
            let mode = mode.map_or(String::new(), |m| format!(", mode {}", m.name()));
            (
                "group added",
                format!("{group} ({smtp}{mode}, {prefixes} prefixes)"),
            )
        }
        PolicyChange::GroupRemoved {
            group,
            smtp,
            prefixes,
        } => (
            "group removed",
            format!("{group} ({smtp}, {prefixes} prefixes)"),
        ),
        PolicyChange::GroupRenamed { from, to } => ("group renamed", format!("{from} -> {to}")),
        PolicyChange::GroupSmtp { group, from, to } => {
            ("group smtp", format!("{group}: {from} -> {to}"))
        }
        PolicyChange::GroupMode { group, from, to } => {
            let name = |m: &Option<Mode>| m.map_or("the policy's", Mode::name);
            (
                "group mode",
                format!("{group}: {} -> {}", name(from), name(to)),
            )
        }
        PolicyChange::Prefix { .. } => return None,
        PolicyChange::RelayAdded { relay } => ("relay added", relay.to_string()),
        PolicyChange::RelayRemoved { relay } => ("relay removed", relay.to_string()),
        PolicyChange::Ports { from, to } => ("ports", format!("{from:?} -> {to:?}")),
        PolicyChange::Mode { from, to } => ("mode", format!("{} -> {}", from.name(), to.name())),
        PolicyChange::Action { from, to } => ("action", format!("{from} -> {to}")),
        PolicyChange::RelayLimit { from, to } => (
            "relay limit",
            format!("{} -> {}", relay_limit(from), relay_limit(to)),
        ),
        PolicyChange::Offenders { from, to } => (
            "offender alerts",
            format!("{} -> {}", alerts(from), alerts(to)),
        ),
        PolicyChange::Events { from, to } => ("events", format!("{from}/s -> {to}/s")),
        PolicyChange::InterfaceAdded { interface } => ("interface added", interface.clone()),
        PolicyChange::InterfaceRemoved { interface } => ("interface removed", interface.clone()),
        PolicyChange::InterfaceXdpMode {
            interface,
            from,
            to,
        } => ("interface mode", format!("{interface}: {from} -> {to}")),
    })
}

pub fn render_plan(plan: &Plan) -> String {
    let summary = &plan.summary;
    let seen_in = format!("in the last {}", window(plan.impact.window_seconds));
    if summary.same {
        return format!(
            "{} against {}: no change in effect\n",
            summary.to, summary.from
        );
    }
    let mut out = format!(
        "{} against {}: {} changes, {} prefixes\n",
        summary.to, summary.from, summary.changes, summary.prefixes
    );
    // Sources and attempts that each changed prefix moves.
    let mut moved: BTreeMap<IpNet, (u64, u64)> = BTreeMap::new();
    for source in &plan.impact.sources {
        if let Some(prefix) = source.prefix {
            let entry = moved.entry(prefix).or_default();
            entry.0 += 1;
            entry.1 += source.attempts;
        }
    }
    let mut rows = Vec::new();
    let mut prefixes = 0;
    for change in &plan.changes {
        if let Some((what, how)) = setting(change) {
            rows.push(vec![what.to_string(), how]);
            continue;
        }
        let PolicyChange::Prefix { prefix, from, to } = change else {
            continue;
        };
        prefixes += 1;
        if prefixes > SHOWN {
            continue;
        }
        let mut how = format!("{prefix} {}", movement(from, to));
        if let Some((sources, attempts)) = moved.get(prefix) {
            how += &format!(
                "; {sources} sources seen {seen_in}, {} attempts",
                thousands(*attempts)
            );
        }
        rows.push(vec!["prefix".to_string(), how]);
    }
    for row in table(&["CHANGE", "WHAT"], &rows).lines() {
        out += &format!("  {row}\n");
    }
    if prefixes > SHOWN {
        out += &format!(
            "  ... and {} more prefixes (--json lists them all)\n",
            prefixes - SHOWN
        );
    }
    out += &format!(
        "\ntraffic: {} sources seen sending to a filtered port {seen_in} would change verdict ({} attempts); the kernel remembers {} sources\n",
        summary.sources,
        thousands(summary.attempts),
        summary.sources_remembered
    );
    if !plan.impact.sources.is_empty() {
        let rows: Vec<Vec<String>> = plan
            .impact
            .sources
            .iter()
            .take(SHOWN)
            .map(|s| {
                vec![
                    s.source.clone(),
                    movement(&s.from, &s.to),
                    s.attempts.to_string(),
                    s.last_seen.clone(),
                ]
            })
            .collect();
        out += &table(&["SOURCE", "CHANGE", "ATTEMPTS", "LAST SEEN"], &rows);
        if plan.impact.sources.len() > SHOWN {
            out += &format!(
                "... and {} more sources (--json lists them all)\n",
                plan.impact.sources.len() - SHOWN
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{Impact, ImpactSource, PlanSummary, SmtpVerdict};

    #[test]
    fn a_plan_reads_like_the_change_it_is() {
        let block = |group: &str| Side {
            group: Some(group.into()),
            verdict: SmtpVerdict::Block,
            mode: Some(Mode::Enforce),
        };
        let allow = |group: &str| Side {
            group: Some(group.into()),
            verdict: SmtpVerdict::Allow,
            mode: None,
        };
        let prefix: IpNet = "100.64.7.0/24".parse().unwrap();
        let source = |n: u8, attempts| ImpactSource {
            source: format!("100.64.7.{n}"),
            from: block("residential"),
            to: allow("leased-line"),
            attempts,
            last_seen: "2026-12-02T09:59:00Z".into(),
            prefix: Some(prefix),
        };
        let plan = Plan {
            changes: vec![
                PolicyChange::Prefix {
                    prefix,
                    from: block("residential"),
                    to: allow("leased-line"),
                },
                PolicyChange::RelayAdded {
                    relay: "203.0.113.26/32".parse().unwrap(),
                },
            ],
            impact: Impact {
                window_seconds: 3600,
                sources: vec![source(9, 3_400), source(10, 10)],
            },
            summary: PlanSummary {
                same: false,
                from: "generation 7 (in force)".into(),
                to: "new.yaml".into(),
                changes: 2,
                prefixes: 1,
                sources: 2,
                attempts: 3_410,
                sources_remembered: 40,
            },
        };
        assert_eq!(
            render_plan(&plan),
            "\
new.yaml against generation 7 (in force): 2 changes, 1 prefixes
  CHANGE       WHAT
  prefix       100.64.7.0/24 residential -> leased-line: block -> allow; 2 sources seen in the last 1h, 3,410 attempts
  relay added  203.0.113.26/32

traffic: 2 sources seen sending to a filtered port in the last 1h would change verdict (3,410 attempts); the kernel remembers 40 sources
SOURCE       CHANGE                                      ATTEMPTS  LAST SEEN
100.64.7.9   residential -> leased-line: block -> allow      3400  2026-12-02T09:59:00Z
100.64.7.10  residential -> leased-line: block -> allow        10  2026-12-02T09:59:00Z
"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
