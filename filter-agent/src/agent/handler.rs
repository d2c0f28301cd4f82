//! Answers the control socket: status, stats, exemptions, explain. Replies are JSON values
//! the CLI renders (or prints with `--json`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Result;
use filter_common::{
    Config, Counter, EXEMPTION_GROUP, Family, MAP_GROUP_NAMES, MAP_INTERFACE_SLOTS, MAP_OFFENDERS,
    MAP_SOURCES_V4, MAP_SOURCES_V6, MAX_GROUPS, MAX_INTERFACES, OFFENDERS_ENTRIES, REASON_COUNT,
    Reason,
};
use serde_json::{Value, json};

use super::{
    events::{self, AlertSettings, Clock, OffenderRow},
    state::{Agent, group_label},
};
use crate::{
    control::{ControlError, Handler, Peer, Request, protocol::DEFAULT_TOP_OFFENDERS},
    dataplane::Dataplane,
    exemptions, explain,
    image::Smtp,
    metrics::{Actions, Snapshot},
    policy::Mode,
};

pub struct AgentHandler {
    pub agent: Arc<Mutex<Agent>>,
}

fn failed(err: anyhow::Error) -> ControlError {
    ControlError::Failed(format!("{err:#}"))
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Handler for AgentHandler {
    fn handle(&self, peer: &Peer, request: Request) -> Result<Value, ControlError> {
        let lock = || {
            self.agent
                .lock()
                .map_err(|_| ControlError::Failed("the agent's state is poisoned".into()))
        };
        // The offender records (up to 65,536) are read without holding the agent, which
        // meanwhile logs events and answers other requests.
        match request {
            Request::Status => {
                let (mut status, path) = {
                    let mut agent = lock()?;
                    let path = agent.pins.map_path(MAP_OFFENDERS);
                    (status(&mut agent).map_err(failed)?, path)
                };
                let records = Dataplane::count_pinned_offenders(&path).map_err(failed)?;
                if let Some(maps) = status["maps"].as_array_mut() {
                    maps.push(json!({
                        "name": MAP_OFFENDERS, "entries": records, "capacity": OFFENDERS_ENTRIES,
                    }));
                }
                return Ok(status);
            }
            Request::Offenders { top } => {
                let top = top.unwrap_or(DEFAULT_TOP_OFFENDERS);
                if top == 0 {
                    return Err(ControlError::BadRequest(
                        "top must be at least 1".to_string(),
                    ));
                }
                let view = OffenderView::of(&*lock()?);
                return offenders(view, top).map_err(failed);
            }
            _ => {}
        }
        let mut agent = lock()?;
        match request {
            Request::Status | Request::Offenders { .. } => unreachable!("answered above"),
            Request::Stats => Ok(serde_json::to_value(counters(&mut agent).map_err(failed)?)
                .map_err(|e| ControlError::Failed(e.to_string()))?),
            Request::ExemptionsList => Ok(exemption_list(&agent)),
            Request::ExemptionsAdd {
                prefix,
                reason,
                expires,
                until,
            } => {
                let exemption = exemptions::parse_request(
                    &prefix,
                    &reason,
                    expires.as_deref(),
                    until.as_deref(),
                    &peer.user,
                    SystemTime::now(),
                )
                .map_err(|e| ControlError::BadRequest(e.to_string()))?;
                exemptions::check_against_policy(&agent.policy_image, exemption.prefix)
                    .map_err(|e| ControlError::BadRequest(e.to_string()))?;
                agent.add_exemption(exemption.clone()).map_err(failed)?;
                Ok(json!({ "added": exemption_json(&exemption) }))
            }
            Request::ExemptionsRemove { prefix } => {
                let prefix = exemptions::parse_prefix(&prefix)
                    .map_err(|e| ControlError::BadRequest(e.to_string()))?;
                let removed = agent.remove_exemption(prefix, &peer.user).map_err(failed)?;
                Ok(json!({ "removed": exemption_json(&removed) }))
            }
            Request::Explain { src, dst, dport } => {
                if src.is_ipv4() != dst.is_ipv4() {
                    return Err(ControlError::BadRequest(format!(
                        "--src {src} and --dst {dst} are of different address families"
                    )));
                }
                let explanation = explain::explain(&agent.applied, src, dst, dport);
                serde_json::to_value(explanation).map_err(|e| ControlError::Failed(e.to_string()))
            }
        }
    }
}

fn exemption_json(e: &exemptions::Exemption) -> Value {
    json!({
        "prefix": e.prefix,
        "source": "cli",
        "reason": e.reason,
        "added_by": e.added_by,
        "added_at": time(e.added_at),
        "expires_at": e.expires_at.map(time),
    })
}

/// Policy allow prefixes (source `policy`) and CLI exemptions (source `cli`).
fn exemption_list(agent: &Agent) -> Value {
    let mut list = Vec::new();
    for (&id, group) in &agent.policy_image.groups {
        if group.smtp != Smtp::Allow {
            continue;
        }
        let prefixes = agent
            .policy_image
            .sources_v4
            .iter()
            .map(|(p, r)| (ipnet::IpNet::V4(*p), r))
            .chain(
                agent
                    .policy_image
                    .sources_v6
                    .iter()
                    .map(|(p, r)| (ipnet::IpNet::V6(*p), r)),
            );
        for (prefix, _) in prefixes.filter(|(_, r)| r.group == id) {
            list.push(json!({
                "prefix": prefix,
                "source": "policy",
                "reason": format!("group {}", group.name),
                "added_by": agent.policy_path.display().to_string(),
                "added_at": time(agent.policy_loaded_at),
                "expires_at": null,
            }));
        }
    }
    list.extend(agent.exemptions.iter().map(exemption_json));
    json!({ "exemptions": list })
}

fn status(agent: &mut Agent) -> Result<Value> {
    let interfaces = agent.pins.attached()?;
    let capacity = agent.dataplane.capacity()?;
    let slots_used = agent.dataplane.interface_slots()?.len();
    let counters = counters(agent)?;
    let total: u64 = counters.by_reason.iter().map(|r| r.packets).sum();
    let count = |reason: Reason| {
        counters
            .by_reason
            .iter()
            .filter(|r| r.reason == reason.name())
            .map(|r| r.packets)
            .sum::<u64>()
    };
    let applied = &agent.applied;
    Ok(json!({
        "agent": {
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": time(agent.started_at),
            "pin_path": agent.pins.root(),
        },
        "interfaces": interfaces,
        "program_id": interfaces.first().map(|i| i.program_id),
        "policy": {
            "file": agent.policy_path,
            "sha256": agent.policy_sha256,
            "loaded_at": time(agent.policy_loaded_at),
            "generation": agent.generation,
            "mode": match agent.policy.mode { Mode::Enforce => "enforce", Mode::Monitor => "monitor" },
            "groups": agent.policy.groups.len(),
            "prefixes": agent.policy.prefix_count(),
            "relays": agent.policy.relays.len(),
            "ports": agent.policy.ports,
            "action": action_name(&agent.applied.config),
            "relay_limit": relay_limit(&agent.applied.config),
            "offenders": offender_alerts(&agent.applied.config),
            "events": event_rate(&agent.applied.config),
        },
        "last_reload": agent.last_reload,
        "maps": [
            { "name": MAP_SOURCES_V4, "entries": applied.sources_v4.len(), "capacity": capacity.sources_v4 },
            { "name": MAP_SOURCES_V6, "entries": applied.sources_v6.len(), "capacity": capacity.sources_v6 },
            { "name": MAP_GROUP_NAMES, "entries": applied.groups.len(), "capacity": MAX_GROUPS },
            { "name": MAP_INTERFACE_SLOTS, "entries": slots_used, "capacity": MAX_INTERFACES },
        ],
        "exemptions": agent.exemptions.len(),
        "counters": {
            "packets": total,
            "blocked": count(Reason::Blocked),
            "monitored": count(Reason::Monitored),
            "malformed": count(Reason::Malformed),
            "rate_limited": count(Reason::RateLimited),
            "resets_sent": counters.actions.resets_sent,
            "events_sent": counters.actions.events_sent,
            "events_suppressed": counters.actions.events_suppressed,
            "events_lost": counters.actions.events_lost,
            "offender_alerts": counters.actions.offender_alerts,
            "offenders_over_threshold": counters.offenders_over_threshold,
        },
    }))
}

fn action_name(config: &Config) -> &'static str {
    if config.reject() { "reject" } else { "drop" }
}

/// `interval` nanoseconds per token with `tolerance` of burst: the tokens per `period`
/// and the burst, as the policy wrote them.
fn rate(interval: u64, tolerance: u64, period_ns: u64) -> (u64, u64) {
    let per_period = (period_ns as f64 / interval as f64).round() as u64;
    let burst = (tolerance as f64 / interval as f64).round() as u64 + 1;
    (per_period, burst)
}

/// The relay limit in force, or null.
fn relay_limit(config: &Config) -> Value {
    if config.relay_interval_ns == 0 {
        return Value::Null;
    }
    let (per_minute, burst) = rate(
        config.relay_interval_ns,
        config.relay_tolerance_ns,
        60_000_000_000,
    );
    json!({ "syn_per_minute": per_minute, "burst": burst })
}

/// The offender alert threshold and window in force, or null.
fn offender_alerts(config: &Config) -> Value {
    if config.offender_alert_after == 0 {
        return Value::Null;
    }
    json!({
        "alert_after": config.offender_alert_after,
        "window": events::duration_text(config.offender_window_ns),
    })
}

/// The drop-event rate in force, or null.
fn event_rate(config: &Config) -> Value {
    if config.event_interval_ns == 0 {
        return Value::Null;
    }
    let (per_second, burst) = rate(
        config.event_interval_ns,
        config.event_tolerance_ns,
        1_000_000_000,
    );
    json!({ "per_second": per_second, "burst": burst })
}

/// What listing the offenders needs from the agent: taken under its lock, used without.
struct OffenderView {
    settings: AlertSettings,
    groups: BTreeMap<u32, String>,
    path: std::path::PathBuf,
}

impl OffenderView {
    fn of(agent: &Agent) -> OffenderView {
        OffenderView {
            settings: agent.alert_settings(),
            groups: agent
                .applied
                .groups
                .iter()
                .map(|(&id, group)| (id, group.name.clone()))
                .collect(),
            path: agent.pins.map_path(MAP_OFFENDERS),
        }
    }
}

/// The `top` sources most likely infected, and how many the kernel tracks.
fn offenders(view: OffenderView, top: usize) -> Result<Value> {
    let settings = view.settings;
    let mut records = Dataplane::read_pinned_offenders(&view.path)?;
    let clock = Clock::now();
    events::rank(&mut records, settings, clock.monotonic_ns);
    let over = records
        .iter()
        .filter(|(_, record)| settings.over_threshold(record, clock.monotonic_ns))
        .count();
    let rows: Vec<OffenderRow> = records
        .iter()
        .take(top)
        .map(|(key, record)| {
            let group = group_label(
                view.groups.get(&record.group).map(String::as_str),
                record.group,
            );
            OffenderRow::new(key, record, group, settings, &clock)
        })
        .collect();
    Ok(json!({
        "at": time(clock.wall),
        "sources": records.len(),
        "over_threshold": over,
        "alert_after": settings.threshold,
        "window": events::duration_text(settings.window_ns),
        "destinations_note": "destinations is an estimate (linear counting over a 64-bit sketch): close for a handful, saturated above about 266",
        "offenders": rows,
    }))
}

#[derive(serde::Serialize)]
pub struct ReasonCount {
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(serde::Serialize)]
pub struct Counters {
    pub at: String,
    pub by_reason: Vec<ReasonCount>,
    pub by_family: Vec<Value>,
    pub by_group: Vec<Value>,
    pub by_interface: Vec<Value>,
    pub actions: Actions,
    /// Sources whose offender alert window is running.
    pub offenders_over_threshold: usize,
    #[serde(skip)]
    pub snapshot: Snapshot,
}

/// Every counter, summed over CPUs, in the shapes `stats` and the metrics want.
pub fn counters(agent: &mut Agent) -> Result<Counters> {
    let slots = agent.dataplane.interface_slots()?;
    let mut interfaces = Vec::new();
    let mut by_reason: BTreeMap<Reason, Counter> = BTreeMap::new();
    let mut by_family: BTreeMap<Family, Counter> = BTreeMap::new();
    let mut by_interface = Vec::new();
    for slot in 0..=MAX_INTERFACES {
        let name = match slots.get(&slot) {
            Some(owner) => owner.interface.clone(),
            None if slot == 0 => "other".to_string(),
            None => continue,
        };
        let counters = agent.dataplane.reason_counters(slot)?;
        for family in Family::ALL {
            for reason in Reason::ALL {
                let c = counters[(family as u32 * REASON_COUNT + reason as u32) as usize];
                if c.packets == 0 {
                    continue;
                }
                add(by_reason.entry(reason).or_default(), c);
                add(by_family.entry(family).or_default(), c);
                by_interface.push(json!({
                    "interface": name, "family": family.name(), "reason": reason.name(),
                    "packets": c.packets, "bytes": c.bytes,
                }));
                interfaces.push((name.clone(), family.name(), reason.name(), c));
            }
        }
    }
    let mut by_group = Vec::new();
    let mut groups = Vec::new();
    for (&id, group) in &agent.applied.groups {
        let counters = agent.dataplane.group_counters(id)?;
        for reason in Reason::ALL {
            let c = counters[reason as usize];
            if c.packets == 0 {
                continue;
            }
            by_group.push(json!({
                "group": group.name, "exemption_group": id == EXEMPTION_GROUP,
                "reason": reason.name(), "packets": c.packets, "bytes": c.bytes,
            }));
            groups.push((group.name.clone(), reason.name(), c));
        }
    }
    let actions = Actions::from_stats(&agent.dataplane.action_stats()?);
    let over_threshold = agent.offenders_over_threshold();
    let snapshot = Snapshot {
        interfaces,
        groups,
        actions,
        offenders_over_threshold: over_threshold as u64,
        maps: Vec::new(),
        exemptions: agent.exemptions.len() as u64,
        policy_generation: agent.generation,
        last_reload_success: agent.last_reload.ok,
        last_reload_time: agent.last_reload.at,
        attached_interfaces: Vec::new(),
    };
    Ok(Counters {
        at: time(SystemTime::now()),
        by_reason: by_reason
            .into_iter()
            .map(|(reason, c)| ReasonCount {
                reason: reason.name(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
        by_family: by_family
            .into_iter()
            .map(|(f, c)| json!({ "family": f.name(), "packets": c.packets, "bytes": c.bytes }))
            .collect(),
        by_group,
        by_interface,
        actions,
        offenders_over_threshold: over_threshold,
        snapshot,
    })
}

fn add(sum: &mut Counter, c: Counter) {
    sum.packets += c.packets;
    sum.bytes += c.bytes;
}

/// What a metrics scrape reports.
pub fn snapshot(agent: &mut Agent) -> Result<Snapshot> {
    let mut snapshot = counters(agent)?.snapshot;
    let capacity = agent.dataplane.capacity()?;
    snapshot.maps = vec![
        (
            MAP_SOURCES_V4.to_string(),
            agent.applied.sources_v4.len() as u64,
            capacity.sources_v4 as u64,
        ),
        (
            MAP_SOURCES_V6.to_string(),
            agent.applied.sources_v6.len() as u64,
            capacity.sources_v6 as u64,
        ),
        (
            MAP_GROUP_NAMES.to_string(),
            agent.applied.groups.len() as u64,
            MAX_GROUPS as u64,
        ),
    ];
    snapshot.attached_interfaces = agent
        .pins
        .attached()?
        .into_iter()
        .map(|a| (a.interface, a.mode, a.program_id))
        .collect();
    Ok(snapshot)
}
