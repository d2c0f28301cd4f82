//! The Prometheus rules shipped in packaging/prometheus: `promtool check rules` on the
//! rules, `promtool test rules` on their unit tests (every alert firing in one case and
//! staying quiet in another), and every metric they read is one the agent exports.
//! Needs Debian's `prometheus` package (promtool), which `cargo xtask setup` installs.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

fn packaging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(packaging())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian's prometheus package; `cargo xtask setup`) does not run: {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let check = promtool(&["check", "rules", "filter-agent.rules.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = promtool(&["test", "rules", "filter-agent.rules.test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_case() {
    let rules = std::fs::read_to_string(packaging().join("filter-agent.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(packaging().join("filter-agent.rules.test.yml")).unwrap();
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    for alert in alerts {
        // One `alertname:` block per evaluation; a quiet one has `exp_alerts: []`.
        let cases: Vec<&str> = tests
            .split("- alertname: ")
            .skip(1)
            .filter(|case| case.starts_with(&format!("{alert}\n")))
            .collect();
        let quiet = cases
            .iter()
            .filter(|c| c.contains("exp_alerts: []"))
            .count();
        assert!(quiet >= 1, "{alert}: no case where it stays quiet");
        assert!(cases.len() > quiet, "{alert}: no case where it fires");
    }
}

#[test]
fn the_rules_read_only_metrics_the_agent_exports() {
    let rules = std::fs::read_to_string(packaging().join("filter-agent.rules.yml")).unwrap();
    let exported = filter_testkit::metrics_text::exported_names(&filter_agent::metrics::render(
        &Default::default(),
    ));
    for name in filter_testkit::metrics_text::metric_names(&rules) {
        assert!(
            exported.contains(&name),
            "the rules read {name}, which the agent does not export"
        );
    }
}
