//! The operator's change workflow on the command line: `reload`, `apply`, `confirm`,
//! `rollback` and `history`, rendered from the agent's typed replies.

use std::path::Path;

use anyhow::Result;

use super::{
    plan::render_plan,
    render::{call, print_json, table},
};
use crate::control::{
    Request,
    protocol::{Applied, Confirmed, History, PendingRollback, Plan, PolicyUpload, PrefixesChanged},
};

/// `reload`, `rollback` and `apply`: what is in force now, and what is still to do.
pub fn applied(socket: &Path, request: &Request) -> Result<()> {
    let applied: Applied = call(socket, request)?;
    print!("{}", render_applied(&applied));
    Ok(())
}

/// `apply --policy FILE`: the file as read, uploaded whole.
pub fn apply_request(name: &Path, text: String, confirm_within: Option<String>) -> Request {
    Request::Apply {
        policy: PolicyUpload::new(name.display().to_string(), text),
        confirm_within,
    }
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(16)]
}

fn render_applied(applied: &Applied) -> String {
    let mut out = if applied.new_generation {
        format!(
            "generation {} in force (sha256 {}), written to {}\n",
            applied.generation,
            short(&applied.sha256),
            applied.policy_file.display()
        )
    } else {
        format!(
            "policy unchanged: generation {} stays in force (sha256 {}, {})\n",
            applied.generation,
            short(&applied.sha256),
            applied.policy_file.display()
        )
    };
    if let Some(fetch) = &applied.fetch {
        out += &format!(
            "fetched {} at {}: {}\n",
            fetch.url,
            fetch.at,
            fetch.outcome.name()
        );
    }
    if let Some(pending) = &applied.pending {
        out += &format!(
            "unconfirmed: run `filter-agent confirm` within {} (by {}), or the agent applies generation {} again\n",
            pending.confirm_within, pending.deadline, pending.rollback_to
        );
    }
    if let Some(settled) = &applied.settled {
        out += &format!(
            "this settles the pending rollback of generation {} to generation {}\n",
            settled.generation, settled.rollback_to
        );
    }
    out
}

/// `prefixes add` and `prefixes remove`: the generation in force, and each prefix's move.
pub fn prefixes(socket: &Path, request: &Request, json: bool) -> Result<()> {
    let changed: PrefixesChanged = call(socket, request)?;
    if json {
        return print_json(&changed);
    }
    print!("{}", render_prefixes(&changed));
    Ok(())
}

fn render_prefixes(changed: &PrefixesChanged) -> String {
    let mut out = String::new();
    for moved in &changed.moved {
        let group = |g: &Option<String>| g.clone().unwrap_or_else(|| "no group".into());
        out += &format!(
            "{}: {} -> {}\n",
            moved.prefix,
            group(&moved.from),
            group(&moved.to)
        );
    }
    out += &format!(
        "generation {} in force: applied with {} map operations in {:.1} ms, kept in {}\n",
        changed.generation,
        changed.map_operations,
        changed.agent_ms,
        changed.drop_in.display()
    );
    out
}

/// `plan` and `diff`: prints the plan; true when nothing changes in effect.
pub fn plan(socket: &Path, request: &Request, json: bool) -> Result<bool> {
    let plan: Plan = call(socket, request)?;
    if json {
        print_json(&plan)?;
    } else {
        print!("{}", render_plan(&plan));
    }
    Ok(plan.summary.same)
}

/// `plan --policy FILE`: the file as read, uploaded whole.
pub fn plan_request(name: &Path, text: String, window_seconds: Option<u64>) -> Request {
    Request::Plan {
        policy: PolicyUpload::new(name.display().to_string(), text),
        window_seconds,
    }
}

pub fn confirm(socket: &Path) -> Result<()> {
    let confirmed: Confirmed = call(socket, &Request::Confirm)?;
    println!(
        "generation {} confirmed; the rollback to generation {} (due {}) is cancelled",
        confirmed.cancelled.generation,
        confirmed.cancelled.rollback_to,
        confirmed.cancelled.deadline
    );
    Ok(())
}

pub fn history(socket: &Path, json: bool) -> Result<()> {
    let history: History = call(socket, &Request::History)?;
    if json {
        return print_json(&history);
    }
    print!("{}", render_history(&history));
    Ok(())
}

fn render_history(history: &History) -> String {
    let rows: Vec<Vec<String>> = history
        .generations
        .iter()
        .map(|g| {
            let marker = if Some(g.generation) == history.current {
                "*"
            } else {
                ""
            };
            let mut how = g.how.name().to_string();
            if let Some(restores) = g.restores {
                how += &format!(" of {restores}");
            }
            vec![
                format!("{}{marker}", g.generation),
                g.applied_at.clone(),
                how,
                g.who.clone().unwrap_or_else(|| "-".into()),
                short(&g.sha256).to_string(),
                g.bytes.to_string(),
                g.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "GENERATION",
            "APPLIED",
            "HOW",
            "WHO",
            "SHA256",
            "BYTES",
            "NOTE",
        ],
        &rows,
    );
    out += &format!(
        "* in force; the last {} generations are kept\n",
        crate::agent::HISTORY_KEPT
    );
    if let Some(pending) = &history.pending {
        out += &pending_line(pending);
    }
    out
}

fn pending_line(pending: &PendingRollback) -> String {
    format!(
        "pending: generation {} (by {}) is rolled back to generation {} at {} unless confirmed\n",
        pending.generation, pending.requested_by, pending.rollback_to, pending.deadline
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{Generation, How};

    #[test]
    fn history_marks_the_generation_in_force_and_the_pending_rollback() {
        let generation = |n: u64, how, who: Option<&str>, restores| Generation {
            generation: n,
            sha256: format!("c0ffee{n:0>58}"),
            bytes: 100 + n,
            applied_at: format!("2026-12-01T10:0{n}:00Z"),
            how,
            who: who.map(Into::into),
            restores,
            note: None,
            prefixes_sha256: None,
        };
        let history = History {
            current: Some(3),
            pending: Some(PendingRollback {
                generation: 3,
                rollback_to: 2,
                deadline: "2026-12-01T10:08:00Z".into(),
                confirm_within: "5m".into(),
                requested_by: "alice".into(),
            }),
            generations: vec![
                generation(1, How::Start, None, None),
                generation(2, How::FileChange, None, None),
                generation(3, How::Rollback, Some("alice"), Some(1)),
            ],
        };
        assert_eq!(
            render_history(&history),
            "\
GENERATION  APPLIED               HOW            WHO    SHA256            BYTES  NOTE
1           2026-12-01T10:01:00Z  start          -      c0ffee0000000000    101
2           2026-12-01T10:02:00Z  file change    -      c0ffee0000000000    102
3*          2026-12-01T10:03:00Z  rollback of 1  alice  c0ffee0000000000    103
* in force; the last 50 generations are kept
pending: generation 3 (by alice) is rolled back to generation 2 at 2026-12-01T10:08:00Z unless confirmed
"
        );
    }
}
