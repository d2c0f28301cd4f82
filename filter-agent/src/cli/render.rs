//! The CLI side of the control socket: send one request, render the typed reply as an
//! aligned table (or print it as JSON with `--json`).

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use filter_common::ActionStat;
use serde::{Serialize, de::DeserializeOwned};

use crate::control::{
    self, Request,
    protocol::{
        EventRate, ExemptionChange, ExemptionList, OffenderAlerts, Offenders, PolicyStatus,
        RelayLimit, SessionChange, SessionEntry, SessionList, SourceStatus, Stats, Status, sorted,
    },
};
use crate::{agent::PinnedFilter, dataplane::ChainProgram};

/// The programs on an interface's hook in run order: `id name [prio N] (ours)`.
fn hook_chain(chain: &[ChainProgram]) -> String {
    if chain.is_empty() {
        return "-".into();
    }
    chain
        .iter()
        .map(|p| {
            let mut text = format!("{} {}", p.id, p.name);
            if let Some(priority) = p.priority {
                text += &format!(" prio {priority}");
                if !p.chain_on_pass {
                    text += " (ends on pass)";
                }
            }
            if p.ours {
                text += " (ours)";
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends `request` and reads the result as `T`; a refused request becomes an error carrying
/// the agent's message.
pub fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T> {
    let reply = control::request::<T>(socket, request)?;
    if !reply.ok {
        bail!(
            "{}",
            reply
                .error
                .unwrap_or_else(|| "the agent refused the request".into())
        );
    }
    reply.result.context("the agent replied without a result")
}

/// [`call`] for a read the pinned filter can answer when no agent runs (root only): then
/// one line on stderr says so (stdout stays the reply, so `--json` stays parseable). With
/// nothing pinned either, the agent's absence is the error.
pub fn read<T: DeserializeOwned>(
    socket: &Path,
    pinned: &PinnedFilter,
    request: &Request,
) -> Result<T> {
    match call(socket, request) {
        Err(err) if err.is::<control::NoAgent>() && pinned.exists() => {
            let (response, enforcing) = pinned
                .answer(request.clone())
                .with_context(|| format!("{err}; reading the pinned filter instead failed"))?;
            eprintln!("{}", enforcing.line());
            // Through JSON, as over the socket: the reply is the same type either way.
            Ok(serde_json::from_value(serde_json::to_value(&response)?)?)
        }
        other => other,
    }
}

/// `--json`: the reply as the agent sent it (keys sorted), indented.
pub(super) fn print_json(reply: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&sorted(reply)?)?);
    Ok(())
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

pub fn status(socket: &Path, pinned: &PinnedFilter, json: bool) -> Result<()> {
    let status: Status = read(socket, pinned, &Request::Status)?;
    if json {
        return print_json(&status);
    }
    print!("{}", render_status(&status));
    Ok(())
}

/// Where the policy comes from; for a URL, the last fetch.
fn render_source(source: &SourceStatus) -> String {
    match source {
        SourceStatus::File { path, watched } => format!(
            "source       file {}{}\n",
            path.display(),
            if *watched {
                " (watched)"
            } else {
                " (not watched)"
            }
        ),
        SourceStatus::Url {
            url,
            key,
            key_id,
            poll_seconds,
            cache,
            etag,
            last_fetch,
        } => {
            let mut out = format!(
                "source       {url} (key {} id {key_id}, poll {poll_seconds}s, cache {})\n",
                key.display(),
                cache.display()
            );
            out += &match last_fetch {
                Some(last) => format!(
                    "last fetch   {} at {}: {} (etag {})\n",
                    last.outcome.name(),
                    last.at,
                    last.message,
                    etag.as_deref().unwrap_or("none")
                ),
                None => "last fetch   none yet\n".to_string(),
            };
            out
        }
    }
}

fn render_status(status: &Status) -> String {
    let policy = &status.policy;
    let reload = &status.last_reload;
    let counters = &status.counters;
    let mut out = match status.agent.pid {
        Some(pid) => format!(
            "agent        pid {pid} (version {}), up since {}, pins {}\n",
            status.agent.version,
            status.agent.started_at,
            status.agent.pin_path.display()
        ),
        None => format!(
            "agent        not running; read from the pins {} and the state directory\n",
            status.agent.pin_path.display()
        ),
    };
    out += &format!(
        "policy       {} (sha256 {}), loaded {}, generation {}\n",
        policy.file.display(),
        policy.sha256.chars().take(16).collect::<String>(),
        policy.loaded_at,
        policy.generation
    );
    out += &format!(
        "             mode {}, action {}, ports {}, {} groups, {} prefixes, {} relays, {} CLI exemptions\n",
        policy.mode.name(),
        policy.action,
        serde_json::to_string(&policy.ports).expect("numbers serialize"),
        policy.groups,
        policy.prefixes,
        policy.relays,
        status.exemptions
    );
    if let Some(drop_in) = &policy.drop_in {
        out += &format!(
            "prefixes     {} (sha256 {}): {} added, {} removed by `filter-agent prefixes`\n",
            drop_in.file.display(),
            drop_in.sha256.chars().take(16).collect::<String>(),
            drop_in.added,
            drop_in.removed
        );
    }
    out += &format!(
        "subscribers  {} sessions, {} exempt by name\n",
        status.sessions, status.subscriber_exemptions
    );
    out += &format!(
        "last reload  {} at {}: {}\n",
        if reload.ok { "ok" } else { "REFUSED" },
        reload.at,
        reload.message
    );
    if let Some(source) = &status.source {
        out += &render_source(source);
    }
    out += &format!("limits       {}\n", limits(policy));
    out += &format!(
        "counters     {} packets seen, {} blocked, {} monitored, {} malformed, {} rate-limited, {} resets sent\n",
        counters.packets,
        counters.blocked,
        counters.monitored,
        counters.malformed,
        counters.rate_limited,
        counters.resets_sent
    );
    out += &format!(
        "events       {} sent, {} suppressed, {} lost; {} offender alerts, {} sources over threshold now\n",
        counters.events_sent,
        counters.events_suppressed,
        counters.events_lost,
        counters.offender_alerts,
        counters.offenders_over_threshold
    );
    out += "\n";
    let rows: Vec<Vec<String>> = status
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.interface.clone(),
                i.mode.clone(),
                i.attach.clone(),
                i.program_id.to_string(),
                if i.link_id == 0 {
                    "-".into()
                } else {
                    i.link_id.to_string()
                },
                hook_chain(&i.chain),
            ]
        })
        .collect();
    out += &table(
        &[
            "INTERFACE",
            "XDP MODE",
            "ATTACH",
            "PROGRAM",
            "LINK",
            "HOOK (run order)",
        ],
        &rows,
    );
    for i in &status.interfaces {
        for warning in &i.warnings {
            out += &format!("warning      {}: {warning}\n", i.interface);
        }
    }
    out += "\n";
    let rows: Vec<Vec<String>> = status
        .maps
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.entries.to_string(),
                m.capacity.to_string(),
            ]
        })
        .collect();
    out += &table(&["MAP", "ENTRIES", "CAPACITY"], &rows);
    out
}

/// The relay limit, offender alerts and drop-event rate of a status reply's policy.
fn limits(policy: &PolicyStatus) -> String {
    let relay = match policy.relay_limit {
        None => "relay limit off".to_string(),
        Some(RelayLimit {
            syn_per_minute,
            burst,
        }) => format!("relay limit {syn_per_minute} SYN/min per source (burst {burst})"),
    };
    let offenders = match &policy.offenders {
        None => "offender alerts off".to_string(),
        Some(OffenderAlerts {
            alert_after,
            window,
        }) => format!("offender alert after {alert_after} attempts in {window}"),
    };
    let events = match policy.events {
        None => "drop events off".to_string(),
        Some(EventRate { per_second, burst }) => {
            format!("drop events {per_second}/s (burst {burst})")
        }
    };
    format!("{relay}, {offenders}, {events}")
}

pub fn offenders(socket: &Path, pinned: &PinnedFilter, top: usize, json: bool) -> Result<()> {
    let reply: Offenders = read(socket, pinned, &Request::Offenders { top: Some(top) })?;
    if json {
        return print_json(&reply);
    }
    print!("{}", render_offenders(&reply));
    Ok(())
}

fn render_offenders(reply: &Offenders) -> String {
    let alerts = match reply.alert_after {
        0 => "offender alerts off".to_string(),
        n => format!("alert after {n} attempts in {}", reply.window),
    };
    let mut out = format!(
        "at {}: {} sources with blocked attempts, {} over threshold ({alerts})\n",
        reply.at, reply.sources, reply.over_threshold,
    );
    // The SUBSCRIBER column only where some session names a source.
    let named = reply.offenders.iter().any(|o| o.subscriber.is_some());
    let rows: Vec<Vec<String>> = reply
        .offenders
        .iter()
        .map(|o| {
            let estimate = if o.destinations_saturated {
                "≥"
            } else {
                "≈"
            };
            let mut row = vec![
                o.source.clone(),
                o.group.clone(),
                o.attempts.to_string(),
                o.in_window.to_string(),
                o.first_seen.clone(),
                o.last_seen.clone(),
                format!("{estimate}{}", o.destinations),
                o.last_destination.clone(),
                if o.over_threshold { "yes" } else { "no" }.to_string(),
            ];
            if named {
                row.push(o.subscriber.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return out;
    }
    let mut header = vec![
        "SOURCE",
        "GROUP",
        "ATTEMPTS",
        "IN WINDOW",
        "FIRST SEEN",
        "LAST SEEN",
        "DESTINATIONS",
        "LAST DESTINATION",
        "OVER THRESHOLD",
    ];
    if named {
        header.push("SUBSCRIBER");
    }
    out += "\n";
    out += &table(&header, &rows);
    out += "\nDESTINATIONS is an estimate (linear counting over a 64-bit sketch): close for a handful, saturated above about 266.\n";
    out
}

pub fn exemptions_list(socket: &Path, pinned: &PinnedFilter, json: bool) -> Result<()> {
    let list: ExemptionList = read(socket, pinned, &Request::ExemptionsList)?;
    if json {
        return print_json(&list);
    }
    print!("{}", render_exemptions(&list));
    Ok(())
}

fn render_exemptions(list: &ExemptionList) -> String {
    let rows: Vec<Vec<String>> = list
        .exemptions
        .iter()
        .map(|e| {
            vec![
                e.prefix.to_string(),
                e.source.name().to_string(),
                e.reason.clone(),
                e.added_by.clone(),
                e.added_at.clone(),
                e.expires_at.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "PREFIX", "SOURCE", "REASON", "ADDED BY", "ADDED AT", "EXPIRES",
        ],
        &rows,
    );
    if !list.subscribers.is_empty() {
        let rows: Vec<Vec<String>> = list
            .subscribers
            .iter()
            .map(|e| {
                vec![
                    e.subscriber.clone(),
                    addresses_text(&e.addresses),
                    e.reason.clone(),
                    e.added_by.clone(),
                    e.added_at.clone(),
                    e.expires_at.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out += "\n";
        out += &table(
            &[
                "SUBSCRIBER",
                "ADDRESSES NOW",
                "REASON",
                "ADDED BY",
                "ADDED AT",
                "EXPIRES",
            ],
            &rows,
        );
    }
    out
}

/// `a, b`; `offline` when there are none.
fn addresses_text(addresses: &[ipnet::IpNet]) -> String {
    if addresses.is_empty() {
        return "offline".into();
    }
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn exemptions_change(socket: &Path, request: Request) -> Result<()> {
    let (what, e) = match call(socket, &request)? {
        ExemptionChange::Added(e) => ("added", e),
        ExemptionChange::Removed(e) => ("removed", e),
        ExemptionChange::SubscriberAdded(e) => {
            println!(
                "exemption added: subscriber {} ({}{}); in force now on {}, and on every address its sessions get",
                e.subscriber,
                e.reason,
                expires_text(&e.expires_at),
                match addresses_text(&e.addresses).as_str() {
                    "offline" => "nothing (offline)".to_string(),
                    text => text.to_string(),
                }
            );
            return Ok(());
        }
        ExemptionChange::SubscriberRemoved(e) => {
            println!(
                "exemption removed: subscriber {} ({}); {} blocked again in the kernel now",
                e.subscriber,
                e.reason,
                match addresses_text(&e.addresses).as_str() {
                    "offline" => "no address".to_string(),
                    text => text.to_string(),
                }
            );
            return Ok(());
        }
    };
    println!(
        "exemption {what}: {} ({}{}); in force in the kernel now",
        e.prefix,
        e.reason,
        expires_text(&e.expires_at)
    );
    Ok(())
}

fn expires_text(expires_at: &Option<String>) -> String {
    match expires_at {
        None => String::new(),
        Some(t) => format!(", expires {t}"),
    }
}

pub fn sessions_list(socket: &Path, json: bool) -> Result<()> {
    let list: SessionList = call(socket, &Request::SessionsList)?;
    if json {
        return print_json(&list);
    }
    print!("{}", render_sessions(&list.sessions));
    Ok(())
}

fn render_sessions(sessions: &[SessionEntry]) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.subscriber.clone(),
                addresses_text(&s.addresses),
                s.feed.name().to_string(),
                s.nas.clone().unwrap_or_else(|| "-".into()),
                s.session_id.clone(),
                s.started_at.clone(),
                s.updated_at.clone(),
                if s.exempt { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SUBSCRIBER",
            "ADDRESSES",
            "FEED",
            "NAS",
            "SESSION ID",
            "STARTED",
            "UPDATED",
            "EXEMPT",
        ],
        &rows,
    )
}

pub fn session_change(socket: &Path, request: Request) -> Result<()> {
    let change: SessionChange = call(socket, &request)?;
    if let Some(s) = &change.up {
        println!(
            "session up: {} ({}) holds {}{}",
            s.subscriber,
            s.session_id,
            addresses_text(&s.addresses),
            if s.exempt {
                "; exempt by name, in force in the kernel now"
            } else {
                ""
            }
        );
    }
    for s in &change.down {
        println!(
            "session down: {} ({}) no longer holds {}",
            s.subscriber,
            s.session_id,
            addresses_text(&s.addresses)
        );
    }
    for note in &change.notes {
        println!("note: {note}");
    }
    Ok(())
}

/// (table key) -> (packets, bytes)
type Totals = BTreeMap<Vec<String>, (u64, u64)>;

/// The rows of each section of `stats`, keyed by their names, in the order shown.
fn sections(stats: &Stats) -> [(&'static str, Vec<&'static str>, Totals); 4] {
    let collect = |rows: Vec<(Vec<String>, u64, u64)>| -> Totals {
        rows.into_iter().map(|(k, p, b)| (k, (p, b))).collect()
    };
    [
        (
            "REASON",
            vec!["reason"],
            collect(
                stats
                    .by_reason
                    .iter()
                    .map(|r| (vec![r.reason.to_string()], r.packets, r.bytes))
                    .collect(),
            ),
        ),
        (
            "FAMILY",
            vec!["family"],
            collect(
                stats
                    .by_family
                    .iter()
                    .map(|r| (vec![r.family.to_string()], r.packets, r.bytes))
                    .collect(),
            ),
        ),
        (
            "GROUP",
            vec!["group", "reason"],
            collect(
                stats
                    .by_group
                    .iter()
                    .map(|r| {
                        (
                            vec![r.group.clone(), r.reason.to_string()],
                            r.packets,
                            r.bytes,
                        )
                    })
                    .collect(),
            ),
        ),
        (
            "INTERFACE",
            vec!["interface", "family", "reason"],
            collect(
                stats
                    .by_interface
                    .iter()
                    .map(|r| {
                        (
                            vec![
                                r.interface.clone(),
                                r.family.to_string(),
                                r.reason.to_string(),
                            ],
                            r.packets,
                            r.bytes,
                        )
                    })
                    .collect(),
            ),
        ),
    ]
}

fn render_stats(stats: &Stats, previous: Option<(&Stats, f64)>) -> String {
    let mut out = format!("at {}\n", stats.at);
    let before = previous.map(|(p, secs)| (sections(p), secs));
    for (i, (title, keys, now)) in sections(stats).into_iter().enumerate() {
        let before = before
            .as_ref()
            .map(|(sections, secs)| (&sections[i].2, *secs));
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
                if let Some((before, secs)) = before {
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
fn render_actions(stats: &Stats, previous: Option<(&Stats, f64)>) -> String {
    let mut header = vec!["ACTION", "COUNT"];
    if previous.is_some() {
        header.push("PER S");
    }
    let rows: Vec<Vec<String>> = ActionStat::ALL
        .iter()
        .map(|&stat| {
            let count = stats.actions.count(stat);
            let mut row = vec![stat.name().to_string(), count.to_string()];
            if let Some((before, secs)) = previous {
                let before = before.actions.count(stat);
                row.push(format!("{:.1}", count.saturating_sub(before) as f64 / secs));
            }
            row
        })
        .collect();
    format!(
        "{}\nsources over the offender threshold: {}\n",
        table(&header, &rows),
        stats.offenders_over_threshold
    )
}

pub fn stats(socket: &Path, pinned: &PinnedFilter, json: bool, watch: Option<u64>) -> Result<()> {
    let Some(interval) = watch else {
        let stats: Stats = read(socket, pinned, &Request::Stats)?;
        if json {
            println!("{}", serde_json::to_string(&sorted(&stats)?)?);
        } else {
            print!("{}", render_stats(&stats, None));
        }
        return Ok(());
    };
    if interval == 0 {
        bail!("--watch needs at least 1 second");
    }
    let mut previous: Option<(Stats, Instant)> = None;
    loop {
        let stats: Stats = call(socket, &Request::Stats)?;
        let now = Instant::now();
        if json {
            println!("{}", serde_json::to_string(&sorted(&stats)?)?);
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
    use serde_json::{Value, json};

    use super::*;

    /// A reply as the CLI reads it off the socket (from text: the names borrow from it).
    fn typed<T: DeserializeOwned>(value: Value) -> T {
        serde_json::from_str(&value.to_string()).unwrap()
    }

    #[test]
    fn offenders_render_as_the_abuse_desk_reads_them() {
        let reply: Offenders = typed(json!({
            "at": "2026-11-28T10:00:00Z",
            "destinations_note": "note",
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
        }));
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

        let empty: Offenders = typed(json!({"at": "t", "sources": 0, "over_threshold": 0,
                           "alert_after": 0, "window": "0s", "destinations_note": "note",
                           "offenders": []}));
        assert_eq!(
            render_offenders(&empty),
            "at t: 0 sources with blocked attempts, 0 over threshold (offender alerts off)\n"
        );
    }

    /// A status reply's policy with the limits of `limits`.
    fn policy(limits: Value) -> PolicyStatus {
        let mut policy = json!({
            "file": "p.yaml", "sha256": "00", "loaded_at": "t", "generation": 1,
            "mode": "enforce", "groups": 1, "prefixes": 1, "relays": 0, "ports": [25],
            "action": "drop",
        });
        policy
            .as_object_mut()
            .unwrap()
            .extend(limits.as_object().unwrap().clone());
        typed(policy)
    }

    /// A stats reply with no counter rows.
    fn stats_reply(fields: Value) -> Stats {
        let mut stats =
            json!({"by_reason": [], "by_family": [], "by_group": [], "by_interface": []});
        stats
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        typed(stats)
    }

    #[test]
    fn limits_say_what_is_on_and_off() {
        assert_eq!(
            limits(&policy(json!({
                "relay_limit": {"syn_per_minute": 10, "burst": 5},
                "offenders": {"alert_after": 100, "window": "10m"},
                "events": {"per_second": 5, "burst": 1},
            }))),
            "relay limit 10 SYN/min per source (burst 5), offender alert after 100 attempts \
             in 10m, drop events 5/s (burst 1)"
        );
        assert_eq!(
            limits(&policy(
                json!({"relay_limit": null, "offenders": null, "events": null})
            )),
            "relay limit off, offender alerts off, drop events off"
        );
    }

    #[test]
    fn stats_end_with_the_actions() {
        let stats = stats_reply(json!({
            "at": "t",
            "actions": {"resets_sent": 3, "events_sent": 12, "events_suppressed": 40,
                        "events_lost": 0, "offender_alerts": 1},
            "offenders_over_threshold": 1,
        }));
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
        let before = stats_reply(
            json!({"at": "t0", "offenders_over_threshold": 0, "actions": {
            "resets_sent": 0, "events_sent": 2, "events_suppressed": 0, "events_lost": 0,
            "offender_alerts": 0}}),
        );
        let text = render_stats(&stats, Some((&before, 2.0)));
        assert!(text.contains("events-sent           12    5.0\n"), "{text}");
    }

    #[test]
    fn offenders_name_their_subscriber_when_a_session_holds_the_source() {
        let row = |source: &str, subscriber: Value| {
            json!({
                "source": source, "family": "ipv4", "group": "residential",
                "attempts": 1, "in_window": 1,
                "first_seen": "t0", "last_seen": "t1",
                "destinations": 1, "destinations_saturated": false,
                "last_destination": "203.0.113.9:25", "over_threshold": false,
                "subscriber": subscriber,
            })
        };
        let reply: Offenders = typed(json!({
            "at": "t", "destinations_note": "n", "sources": 2, "over_threshold": 0,
            "alert_after": 0, "window": "0s",
            "offenders": [row("100.64.0.20", json!("alice")), row("100.64.0.30", Value::Null)],
        }));
        let text = render_offenders(&reply);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].ends_with("OVER THRESHOLD  SUBSCRIBER"), "{text}");
        assert!(
            lines[3].starts_with("100.64.0.20") && lines[3].ends_with("no              alice"),
            "{text}"
        );
        assert!(lines[4].ends_with("no              -"), "{text}");
        // No session named anyone: no column (an older agent sends no field at all).
        let mut reply = reply;
        for o in &mut reply.offenders {
            o.subscriber = None;
        }
        assert!(!render_offenders(&reply).contains("SUBSCRIBER"));
    }

    #[test]
    fn sessions_and_subscriber_exemptions_render_as_tables() {
        let sessions: SessionList = typed(json!({"sessions": [
            {"subscriber": "alice", "feed": "radius", "nas": "192.0.2.1", "session_id": "0001",
             "addresses": ["100.64.0.21/32", "2001:db8:1000:20::/64"],
             "started_at": "t0", "updated_at": "t1", "exempt": true},
            {"subscriber": "bob", "feed": "hook", "nas": null, "session_id": "ppp2-4444",
             "addresses": ["100.64.0.20/32"], "started_at": "t0", "updated_at": "t0", "exempt": false},
        ]}));
        assert_eq!(
            render_sessions(&sessions.sessions),
            "SUBSCRIBER  ADDRESSES                              FEED    NAS        SESSION ID  STARTED  UPDATED  EXEMPT\n\
             alice       100.64.0.21/32, 2001:db8:1000:20::/64  radius  192.0.2.1  0001        t0       t1       yes\n\
             bob         100.64.0.20/32                         hook    -          ppp2-4444   t0       t0       no\n"
        );
        let list: ExemptionList = typed(json!({
            "exemptions": [],
            "subscribers": [
                {"subscriber": "alice", "addresses": [], "reason": "ticket 4711",
                 "added_by": "root", "added_at": "t0", "expires_at": null},
            ],
        }));
        let text = render_exemptions(&list);
        assert!(
            text.ends_with(
                "SUBSCRIBER  ADDRESSES NOW  REASON       ADDED BY  ADDED AT  EXPIRES\n\
                 alice       offline        ticket 4711  root      t0        -\n"
            ),
            "{text}"
        );
        // A list from an agent without subscribers: no second table.
        let older: ExemptionList = typed(json!({"exemptions": []}));
        assert!(!render_exemptions(&older).contains("SUBSCRIBER"));
    }

    #[test]
    fn table_pads_by_characters() {
        let text = table(&["A", "B"], &[vec!["≈3".into(), "x".into()]]);
        assert_eq!(text, "A   B\n≈3  x\n");
    }
}
