//! The agent's `/metrics` as the tests read it: one scrape over HTTP from inside the
//! lab's router namespace, and one sample's value from the OpenMetrics text.

use std::io::{Read, Write};

use crate::lab::{Lab, Ns};

/// The whole HTTP response (status line, headers, body) of `GET /metrics` from the
/// agent's metrics listener on 127.0.0.1:`port` in the router namespace; it must be a 200.
pub fn scrape(lab: &Lab, port: u16) -> String {
    lab.in_netns(Ns::Router, || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    })
    .unwrap()
}

/// The sum of the samples `name{labels} value` whose labels include `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap()
                .parse::<f64>()
                .expect("a number")
        })
        .sum()
}

/// The metric names an exposition offers to PromQL: every sample's name, and every
/// family its `# TYPE` line describes even without samples (a counter as `NAME_total`,
/// as Prometheus stores it).
pub fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(described) = line.strip_prefix("# TYPE ") {
            let mut parts = described.split(' ');
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            });
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Identifiers in `text` (PromQL, a rules file, a dashboard) that start with `prefix`
/// and run on over `[A-Za-z0-9_:]`; one preceded by such a character is part of
/// another name and skipped.
fn identifiers(text: &str, prefix: &str) -> std::collections::BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = std::collections::BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        if text[..at].chars().next_back().is_some_and(word) {
            continue;
        }
        let rest = &text[at..];
        let end = rest.find(|c: char| !word(c)).unwrap_or(rest.len());
        names.insert(rest[..end].to_string());
    }
    names
}

/// The agent's metric names `text` uses: `filter_agent_…` (recording rules, named
/// `filter_agent:…`, are not among them; see [`recorded_names`]).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    identifiers(text, "filter_agent_")
}

/// The recording-rule names (`filter_agent:…`) `text` uses.
pub fn recorded_names(text: &str) -> std::collections::BTreeSet<String> {
    identifiers(text, "filter_agent:")
}
