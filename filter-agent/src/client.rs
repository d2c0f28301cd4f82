//! The CLI side of the control socket: send one request, render the reply as an aligned
//! table (or print the JSON with `--json`).

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::control::{self, Request};

/// Sends `request`; a refused request becomes an error carrying the agent's message.
pub fn call(socket: &Path, request: &Request) -> Result<Value> {
    let reply = control::request(socket, request)?;
    if !reply.ok {
        bail!(
            "{}",
            reply
                .error
                .unwrap_or_else(|| "the agent refused the request".into())
        );
    }
    Ok(reply.result.unwrap_or(Value::Null))
}

/// Left-aligned columns, two spaces apart; numbers right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let numeric: Vec<bool> = (0..header.len())
        .map(|i| !rows.is_empty() && rows.iter().all(|r| r[i].parse::<f64>().is_ok()))
        .collect();
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if numeric[i] {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        text.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn status(socket: &Path, json: bool) -> Result<()> {
    let status = call(socket, &Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let policy = &status["policy"];
    let reload = &status["last_reload"];
    println!(
        "agent        pid {} (version {}), up since {}, pins {}",
        s(&status["agent"]["pid"]),
        s(&status["agent"]["version"]),
        s(&status["agent"]["started_at"]),
        s(&status["agent"]["pin_path"])
    );
    println!(
        "policy       {} (sha256 {}), loaded {}, generation {}",
        s(&policy["file"]),
        s(&policy["sha256"]).chars().take(16).collect::<String>(),
        s(&policy["loaded_at"]),
        s(&policy["generation"])
    );
    println!(
        "             mode {}, ports {}, {} groups, {} prefixes, {} relays, {} CLI exemptions",
        s(&policy["mode"]),
        s(&policy["ports"]),
        s(&policy["groups"]),
        s(&policy["prefixes"]),
        s(&policy["relays"]),
        s(&status["exemptions"])
    );
    println!(
        "last reload  {} at {}: {}",
        if reload["ok"] == Value::Bool(true) {
            "ok"
        } else {
            "REFUSED"
        },
        s(&reload["at"]),
        s(&reload["message"])
    );
    let counters = &status["counters"];
    println!(
        "counters     {} packets seen, {} blocked, {} monitored, {} malformed",
        s(&counters["packets"]),
        s(&counters["blocked"]),
        s(&counters["monitored"]),
        s(&counters["malformed"])
    );
    println!();
    let rows: Vec<Vec<String>> = status["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                s(&i["interface"]),
                s(&i["mode"]),
                s(&i["program_id"]),
                s(&i["link_id"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["INTERFACE", "XDP MODE", "PROGRAM", "LINK"], &rows)
    );
    println!();
    let rows: Vec<Vec<String>> = status["maps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| vec![s(&m["name"]), s(&m["entries"]), s(&m["capacity"])])
        .collect();
    print!("{}", table(&["MAP", "ENTRIES", "CAPACITY"], &rows));
    Ok(())
}

pub fn exemptions_list(socket: &Path, json: bool) -> Result<()> {
    let list = call(socket, &Request::ExemptionsList)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list["exemptions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                s(&e["prefix"]),
                s(&e["source"]),
                s(&e["reason"]),
                s(&e["added_by"]),
                s(&e["added_at"]),
                s(&e["expires_at"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "PREFIX", "SOURCE", "REASON", "ADDED BY", "ADDED AT", "EXPIRES"
            ],
            &rows
        )
    );
    Ok(())
}

pub fn exemptions_change(socket: &Path, request: Request) -> Result<()> {
    let reply = call(socket, &request)?;
    let (what, e) = match (&reply["added"], &reply["removed"]) {
        (Value::Object(_), _) => ("added", &reply["added"]),
        (_, Value::Object(_)) => ("removed", &reply["removed"]),
        _ => bail!("unexpected reply from the agent: {reply}"),
    };
    let expires = match &e["expires_at"] {
        Value::Null => String::new(),
        t => format!(", expires {}", s(t)),
    };
    println!(
        "exemption {what}: {} ({}{expires}); in force in the kernel now",
        s(&e["prefix"]),
        s(&e["reason"])
    );
    Ok(())
}

/// (table key) -> (packets, bytes)
type Totals = BTreeMap<Vec<String>, (u64, u64)>;

fn totals(stats: &Value, section: &str, keys: &[&str]) -> Totals {
    stats[section]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let key = keys.iter().map(|k| s(&row[*k])).collect();
            let n = |f: &str| row[f].as_u64().unwrap_or(0);
            (key, (n("packets"), n("bytes")))
        })
        .collect()
}

fn render_stats(stats: &Value, previous: Option<(&Value, f64)>) -> String {
    let sections: [(&str, &str, &[&str]); 4] = [
        ("by_reason", "REASON", &["reason"]),
        ("by_family", "FAMILY", &["family"]),
        ("by_group", "GROUP", &["group", "reason"]),
        (
            "by_interface",
            "INTERFACE",
            &["interface", "family", "reason"],
        ),
    ];
    let mut out = format!("at {}\n", s(&stats["at"]));
    for (section, title, keys) in sections {
        let now = totals(stats, section, keys);
        let before = previous.map(|(p, secs)| (totals(p, section, keys), secs));
        let mut header: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
        header[0] = title.to_string();
        header.extend(["PACKETS".into(), "BYTES".into()]);
        if before.is_some() {
            header.extend(["PKT/S".into(), "BIT/S".into()]);
        }
        let rows: Vec<Vec<String>> = now
            .iter()
            .map(|(key, (packets, bytes))| {
                let mut row = key.clone();
                row.extend([packets.to_string(), bytes.to_string()]);
                if let Some((before, secs)) = &before {
                    let (p0, b0) = before.get(key).copied().unwrap_or((0, 0));
                    row.push(format!("{:.1}", packets.saturating_sub(p0) as f64 / secs));
                    row.push(format!(
                        "{:.0}",
                        bytes.saturating_sub(b0) as f64 * 8.0 / secs
                    ));
                }
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        out += "\n";
        out += &table(&header, &rows);
    }
    out
}

pub fn stats(socket: &Path, json: bool, watch: Option<u64>) -> Result<()> {
    let Some(interval) = watch else {
        let stats = call(socket, &Request::Stats)?;
        if json {
            println!("{}", serde_json::to_string(&stats)?);
        } else {
            print!("{}", render_stats(&stats, None));
        }
        return Ok(());
    };
    if interval == 0 {
        bail!("--watch needs at least 1 second");
    }
    let mut previous: Option<(Value, Instant)> = None;
    loop {
        let stats = call(socket, &Request::Stats)?;
        let now = Instant::now();
        if json {
            println!("{}", serde_json::to_string(&stats)?);
        } else {
            let prev = previous
                .as_ref()
                .map(|(v, t)| (v, now.duration_since(*t).as_secs_f64()));
            // Clear the screen between rounds, as `watch` does.
            print!("\x1b[2J\x1b[H{}", render_stats(&stats, prev));
        }
        previous = Some((stats, now));
        std::thread::sleep(Duration::from_secs(interval));
    }
}
