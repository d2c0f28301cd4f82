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
    // Widths in characters, as `format!` pads (`≈3` is two, not four).
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
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
        "             mode {}, action {}, ports {}, {} groups, {} prefixes, {} relays, {} CLI exemptions",
        s(&policy["mode"]),
        s(&policy["action"]),
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
    println!("limits       {}", limits(policy));
    let counters = &status["counters"];
    println!(
        "counters     {} packets seen, {} blocked, {} monitored, {} malformed, {} rate-limited, {} resets sent",
        s(&counters["packets"]),
        s(&counters["blocked"]),
        s(&counters["monitored"]),
        s(&counters["malformed"]),
        s(&counters["rate_limited"]),
        s(&counters["resets_sent"])
    );
    println!(
        "events       {} sent, {} suppressed, {} lost; {} offender alerts, {} sources over threshold now",
        s(&counters["events_sent"]),
        s(&counters["events_suppressed"]),
        s(&counters["events_lost"]),
        s(&counters["offender_alerts"]),
        s(&counters["offenders_over_threshold"])
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

/// The relay limit, offender alerts and drop-event rate of a status reply's policy.
fn limits(policy: &Value) -> String {
    let relay = match &policy["relay_limit"] {
        Value::Null => "relay limit off".to_string(),
        limit => format!(
            "relay limit {} SYN/min per source (burst {})",
            s(&limit["syn_per_minute"]),
            s(&limit["burst"])
        ),
    };
    let offenders = match &policy["offenders"] {
        Value::Null => "offender alerts off".to_string(),
        alerts => format!(
            "offender alert after {} attempts in {}",
            s(&alerts["alert_after"]),
            s(&alerts["window"])
        ),
    };
    let events = match &policy["events"] {
        Value::Null => "drop events off".to_string(),
        rate => format!(
            "drop events {}/s (burst {})",
            s(&rate["per_second"]),
            s(&rate["burst"])
        ),
    };
    format!("{relay}, {offenders}, {events}")
}

pub fn offenders(socket: &Path, top: usize, json: bool) -> Result<()> {
    let reply = call(socket, &Request::Offenders { top: Some(top) })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render_offenders(&reply));
    }
    Ok(())
}

fn render_offenders(reply: &Value) -> String {
    let alerts = match reply["alert_after"].as_u64() {
        Some(0) | None => "offender alerts off".to_string(),
        Some(n) => format!("alert after {n} attempts in {}", s(&reply["window"])),
    };
    let mut out = format!(
        "at {}: {} sources with blocked attempts, {} over threshold ({alerts})\n",
        s(&reply["at"]),
        s(&reply["sources"]),
        s(&reply["over_threshold"]),
    );
    let rows: Vec<Vec<String>> = reply["offenders"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let estimate = if o["destinations_saturated"] == Value::Bool(true) {
                "≥"
            } else {
                "≈"
            };
            vec![
                s(&o["source"]),
                s(&o["group"]),
                s(&o["attempts"]),
                s(&o["in_window"]),
                s(&o["first_seen"]),
                s(&o["last_seen"]),
                format!("{estimate}{}", s(&o["destinations"])),
                s(&o["last_destination"]),
                if o["over_threshold"] == Value::Bool(true) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return out;
    }
    out += "\n";
    out += &table(
        &[
            "SOURCE",
            "GROUP",
            "ATTEMPTS",
            "IN WINDOW",
            "FIRST SEEN",
            "LAST SEEN",
            "DESTINATIONS",
            "LAST DESTINATION",
            "OVER THRESHOLD",
        ],
        &rows,
    );
    out += "\nDESTINATIONS is an estimate (linear counting over a 64-bit sketch): close for a handful, saturated above about 266.\n";
    out
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
    out += "\n";
    out += &render_actions(stats, previous);
    out
}

/// What the program did besides passing and dropping: resets, events, offender alerts.
fn render_actions(stats: &Value, previous: Option<(&Value, f64)>) -> String {
    let names = [
        ("resets_sent", "resets-sent"),
        ("events_sent", "events-sent"),
        ("events_suppressed", "events-suppressed"),
        ("events_lost", "events-lost"),
        ("offender_alerts", "offender-alerts"),
    ];
    let mut header = vec!["ACTION", "COUNT"];
    if previous.is_some() {
        header.push("PER S");
    }
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|(key, name)| {
            let count = stats["actions"][key].as_u64().unwrap_or(0);
            let mut row = vec![name.to_string(), count.to_string()];
            if let Some((before, secs)) = previous {
                let before = before["actions"][key].as_u64().unwrap_or(0);
                row.push(format!("{:.1}", count.saturating_sub(before) as f64 / secs));
            }
            row
        })
        .collect();
    format!(
        "{}\nsources over the offender threshold: {}\n",
        table(&header, &rows),
        s(&stats["offenders_over_threshold"])
    )
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn offenders_render_as_the_abuse_desk_reads_them() {
        let reply = json!({
            "at": "2026-11-28T10:00:00Z",
            "sources": 2,
            "over_threshold": 1,
            "alert_after": 3,
            "window": "1m",
            "offenders": [
                {
                    "source": "100.64.0.10", "family": "ipv4", "group": "residential",
                    "attempts": 5, "in_window": 5,
                    "first_seen": "2026-11-28T09:59:50Z", "last_seen": "2026-11-28T09:59:58Z",
                    "destinations": 3, "destinations_saturated": false,
                    "last_destination": "203.0.113.9:25", "over_threshold": true,
                },
                {
                    "source": "2001:db8:1000::/64", "family": "ipv6", "group": "residential",
                    "attempts": 1200, "in_window": 0,
                    "first_seen": "2026-11-27T08:00:00Z", "last_seen": "2026-11-27T09:00:00Z",
                    "destinations": 266, "destinations_saturated": true,
                    "last_destination": "[2001:db8:ffff::9]:25", "over_threshold": false,
                },
            ],
        });
        let text = render_offenders(&reply);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "at 2026-11-28T10:00:00Z: 2 sources with blocked attempts, 1 over threshold \
             (alert after 3 attempts in 1m)"
        );
        assert_eq!(
            lines[2],
            "SOURCE              GROUP        ATTEMPTS  IN WINDOW  FIRST SEEN            \
             LAST SEEN             DESTINATIONS  LAST DESTINATION       OVER THRESHOLD"
        );
        assert_eq!(
            lines[3],
            "100.64.0.10         residential         5          5  2026-11-28T09:59:50Z  \
             2026-11-28T09:59:58Z  ≈3            203.0.113.9:25         yes"
        );
        assert_eq!(
            lines[4],
            "2001:db8:1000::/64  residential      1200          0  2026-11-27T08:00:00Z  \
             2026-11-27T09:00:00Z  ≥266          [2001:db8:ffff::9]:25  no"
        );
        assert!(
            lines[6].starts_with("DESTINATIONS is an estimate"),
            "{text}"
        );

        let empty = json!({"at": "t", "sources": 0, "over_threshold": 0, "alert_after": 0,
                           "window": "0s", "offenders": []});
        assert_eq!(
            render_offenders(&empty),
            "at t: 0 sources with blocked attempts, 0 over threshold (offender alerts off)\n"
        );
    }

    #[test]
    fn limits_say_what_is_on_and_off() {
        assert_eq!(
            limits(&json!({
                "relay_limit": {"syn_per_minute": 10, "burst": 5},
                "offenders": {"alert_after": 100, "window": "10m"},
                "events": {"per_second": 5, "burst": 1},
            })),
            "relay limit 10 SYN/min per source (burst 5), offender alert after 100 attempts \
             in 10m, drop events 5/s (burst 1)"
        );
        assert_eq!(
            limits(&json!({"relay_limit": null, "offenders": null, "events": null})),
            "relay limit off, offender alerts off, drop events off"
        );
    }

    #[test]
    fn stats_end_with_the_actions() {
        let stats = json!({
            "at": "t",
            "actions": {"resets_sent": 3, "events_sent": 12, "events_suppressed": 40,
                        "events_lost": 0, "offender_alerts": 1},
            "offenders_over_threshold": 1,
        });
        let text = render_stats(&stats, None);
        assert!(
            text.ends_with(
                "ACTION             COUNT\n\
                 resets-sent            3\n\
                 events-sent           12\n\
                 events-suppressed     40\n\
                 events-lost            0\n\
                 offender-alerts        1\n\
                 \n\
                 sources over the offender threshold: 1\n"
            ),
            "{text}"
        );
        let before = json!({"actions": {"events_sent": 2}});
        let text = render_stats(&stats, Some((&before, 2.0)));
        assert!(text.contains("events-sent           12    5.0\n"), "{text}");
    }

    #[test]
    fn table_pads_by_characters() {
        let text = table(&["A", "B"], &[vec!["≈3".into(), "x".into()]]);
        assert_eq!(text, "A   B\n≈3  x\n");
    }
}
