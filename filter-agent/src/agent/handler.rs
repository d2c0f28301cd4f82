//! Answers the control socket: status, stats, exemptions, explain. Replies are JSON values
//! the CLI renders (or prints with `--json`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Result;
use filter_common::{
    Counter, EXEMPTION_GROUP, Family, MAP_GROUP_NAMES, MAP_INTERFACE_SLOTS, MAP_SOURCES_V4,
    MAP_SOURCES_V6, MAX_GROUPS, MAX_INTERFACES, REASON_COUNT, Reason,
};
use serde_json::{Value, json};

use super::state::Agent;
use crate::{
    control::{ControlError, Handler, Peer, Request},
    exemptions, explain,
    image::Smtp,
    metrics::Snapshot,
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
        let mut agent = self
            .agent
            .lock()
            .map_err(|_| ControlError::Failed("the agent's state is poisoned".into()))?;
        match request {
            Request::Status => status(&mut agent).map_err(failed),
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
        },
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
    let snapshot = Snapshot {
        interfaces,
        groups,
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
