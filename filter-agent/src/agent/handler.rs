//! Answers the control socket, one function per request, with the typed replies of
//! [`protocol`](crate::control::protocol). What a reply reads from the kernel is gathered
//! first and handed over as plain data, so the replies are built (and tested) without one.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use anyhow::Result;
use filter_common::{
    Action, Counter, EXEMPTION_GROUP, Family, MAX_GROUPS, MAX_INTERFACES, OFFENDERS_ENTRIES,
    Offender, REASON_COUNT, Reason, Smtp, SourceKey, maps,
};
use ipnet::IpNet;

use super::{
    clock::Clock,
    history::Origin,
    offenders::{self, AlertSettings},
    state::{Agent, SessionSelector, State, group_ids, group_label, subscriber_of_key},
};
use crate::{
    control::{
        ControlError, Handler, Peer, Request,
        protocol::{
            AgentInfo, AttachedInterface, DEFAULT_TOP_OFFENDERS, DropInStatus, EventRate,
            ExemptionChange, ExemptionEntry, ExemptionList, ExemptionSource, Explanation,
            FamilyCount, GroupCount, History, How, InterfaceCount, LastReload, MapUsage,
            OffenderAlerts, OffenderRow, Offenders, PLAN_WINDOW_SECONDS, Plan, PolicyStatus,
            PolicyUpload, ReasonCount, RelayLimit, Response, SessionChange, SessionEntry,
            SessionList, SourceStatus, Stats, Status, StatusCounters, SubscriberExemptionEntry,
            timestamp,
        },
    },
    dataplane::{self, Capacity, Dataplane, PinDir},
    drop_in::{self, Change},
    exemptions::{self, Exemption},
    explain,
    image::MapImage,
    metrics::{Actions, AttachedMetric, Snapshot},
    plan,
    policy::Policy,
    source::PolicySource,
    subscribers::{Feed, Session, SessionKey, SubscriberExemption, Subscribers, sessions},
};

pub struct AgentHandler {
    pub agent: Arc<Mutex<Agent>>,
}

fn failed(err: anyhow::Error) -> ControlError {
    ControlError::Failed(format!("{err:#}"))
}

fn bad(err: impl std::fmt::Display) -> ControlError {
    ControlError::BadRequest(err.to_string())
}

impl Handler for AgentHandler {
    type Reply = Response;

    fn handle(&self, peer: &Peer, request: Request) -> Result<Response, ControlError> {
        match request {
            Request::Status => self
                .status()
                .map(|status| Response::Status(Box::new(status))),
            Request::Stats => {
                let stats = counters(&mut *self.lock()?).map_err(failed)?.stats;
                Ok(Response::Stats(stats))
            }
            Request::ExemptionsList => {
                Ok(Response::Exemptions(exemption_list(&self.lock()?.state)))
            }
            Request::ExemptionsAdd {
                prefix,
                reason,
                expires,
                until,
            } => {
                let mut agent = self.lock()?;
                let exemption = exemption_to_add(
                    &agent.state,
                    &peer.user,
                    &prefix,
                    &reason,
                    expires.as_deref(),
                    until.as_deref(),
                    SystemTime::now(),
                )?;
                agent.add_exemption(exemption.clone()).map_err(failed)?;
                Ok(Response::ExemptionChange(ExemptionChange::Added(
                    cli_entry(&exemption),
                )))
            }
            Request::ExemptionsRemove { prefix } => {
                let mut agent = self.lock()?;
                let prefix = exemption_to_remove(&agent.state, &prefix)?;
                let removed = agent.remove_exemption(prefix, &peer.user).map_err(failed)?;
                Ok(Response::ExemptionChange(ExemptionChange::Removed(
                    cli_entry(&removed),
                )))
            }
            Request::Explain { src, dst, dport } => {
                explain_flow(&self.lock()?.state, src, dst, dport).map(Response::Explain)
            }
            Request::Offenders { top } => self.offenders(top).map(Response::Offenders),
            Request::SessionsList => Ok(Response::Sessions(session_list(&self.lock()?.state))),
            Request::SessionsUp {
                subscriber,
                addresses,
                session_id,
            } => {
                let mut agent = self.lock()?;
                let session = session_to_start(
                    &subscriber,
                    &addresses,
                    session_id.as_deref(),
                    SystemTime::now(),
                )?;
                let key = session.key.clone();
                let notes = agent.session_up(session).map_err(failed)?;
                let state = &agent.state;
                let up = state
                    .subscribers
                    .sessions
                    .get(&key)
                    .map(|s| session_entry(state, s));
                Ok(Response::SessionChange(SessionChange {
                    up,
                    down: Vec::new(),
                    notes,
                }))
            }
            Request::SessionsDown {
                subscriber,
                session_id,
            } => {
                let selector = match (subscriber, session_id) {
                    (Some(name), None) => SessionSelector::Subscriber(
                        sessions::check_name(&name, "subscriber name").map_err(bad)?,
                    ),
                    (None, Some(id)) => SessionSelector::SessionId(
                        sessions::check_name(&id, "session id").map_err(bad)?,
                    ),
                    _ => return Err(bad("give either a subscriber or a session id")),
                };
                let mut agent = self.lock()?;
                let ended = agent
                    .sessions_down(&selector, &format!("sessions down by {}", peer.user))
                    .map_err(failed)?;
                let down = ended
                    .iter()
                    .map(|s| session_entry(&agent.state, s))
                    .collect();
                Ok(Response::SessionChange(SessionChange {
                    up: None,
                    down,
                    notes: Vec::new(),
                }))
            }
            Request::SubscriberExemptionsAdd {
                subscriber,
                reason,
                expires,
                until,
            } => {
                let subscriber =
                    sessions::check_name(&subscriber, "subscriber name").map_err(bad)?;
                let terms = exemptions::parse_terms(
                    &reason,
                    expires.as_deref(),
                    until.as_deref(),
                    &peer.user,
                    SystemTime::now(),
                )
                .map_err(bad)?;
                let mut agent = self.lock()?;
                let exemption = SubscriberExemption::new(subscriber, terms);
                agent
                    .add_subscriber_exemption(exemption.clone())
                    .map_err(failed)?;
                Ok(Response::ExemptionChange(ExemptionChange::SubscriberAdded(
                    subscriber_entry(&agent.state, &exemption),
                )))
            }
            Request::SubscriberExemptionsRemove { subscriber } => {
                let mut agent = self.lock()?;
                let removed = agent
                    .remove_subscriber_exemption(subscriber.trim(), &peer.user)
                    .map_err(failed)?;
                Ok(Response::ExemptionChange(
                    ExemptionChange::SubscriberRemoved(subscriber_entry(&agent.state, &removed)),
                ))
            }
            Request::Reload => {
                let now = self
                    .lock()?
                    .state
                    .fetch
                    .as_ref()
                    .and_then(|f| f.now.clone());
                if let Some(now) = now {
                    // Fetched by the fetch task, waited for here (a blocking thread), the
                    // agent unlocked meanwhile.
                    let (reply, outcome) = tokio::sync::oneshot::channel();
                    now.blocking_send(Some(reply))
                        .map_err(|_| ControlError::Failed("the fetch task has stopped".into()))?;
                    let applied = outcome
                        .blocking_recv()
                        .map_err(|_| ControlError::Failed("the fetch task has stopped".into()))?
                        .map_err(ControlError::Failed)?;
                    return Ok(Response::Applied(applied));
                }
                let origin = Origin::new(How::Reload, Some(peer.user.clone()));
                let applied = self.lock()?.reload(origin).map_err(failed)?;
                Ok(Response::Applied(applied))
            }
            Request::Apply {
                policy,
                confirm_within,
            } => {
                let mut agent = self.lock()?;
                let applied = agent
                    .apply_policy(
                        policy.text,
                        &policy.name,
                        confirm_within.as_deref(),
                        &peer.user,
                    )
                    .map_err(failed)?;
                Ok(Response::Applied(applied))
            }
            Request::Confirm => {
                let confirmed = self.lock()?.confirm(&peer.user).map_err(failed)?;
                Ok(Response::Confirmed(confirmed))
            }
            Request::Rollback { to, confirm_within } => {
                let mut agent = self.lock()?;
                let applied = agent
                    .roll_back(to, confirm_within.as_deref(), &peer.user)
                    .map_err(failed)?;
                Ok(Response::Applied(applied))
            }
            Request::History => Ok(Response::History(history(&self.lock()?.state))),
            Request::Plan {
                policy,
                window_seconds,
            } => self
                .plan(policy, window_seconds)
                .map(|plan| Response::Plan(Box::new(plan))),
            Request::Diff {
                from,
                to,
                window_seconds,
            } => self
                .diff(from, to, window_seconds)
                .map(|plan| Response::Plan(Box::new(plan))),
            Request::PrefixesAdd { group, prefixes } => {
                let change = Change::Add {
                    group,
                    prefixes: prefixes_of(&prefixes)?,
                };
                self.change_prefixes(peer, &change)
            }
            Request::PrefixesRemove { prefixes } => {
                let change = Change::Remove {
                    prefixes: prefixes_of(&prefixes)?,
                };
                self.change_prefixes(peer, &change)
            }
        }
    }
}

/// The prefixes of a `prefixes` request, each read strictly; every bad one is named.
fn prefixes_of(texts: &[String]) -> Result<Vec<IpNet>, ControlError> {
    let (prefixes, errors): (Vec<_>, Vec<_>) = texts
        .iter()
        .map(|t| drop_in::parse_prefix(t))
        .partition(Result::is_ok);
    if !errors.is_empty() {
        let reasons = errors.into_iter().filter_map(Result::err).collect();
        return Err(bad(drop_in::Refused(reasons)));
    }
    Ok(prefixes.into_iter().filter_map(Result::ok).collect())
}

impl AgentHandler {
    fn change_prefixes(&self, peer: &Peer, change: &Change) -> Result<Response, ControlError> {
        let changed = self
            .lock()?
            .change_prefixes(change, &peer.user)
            .map_err(failed)?;
        Ok(Response::PrefixesChanged(changed))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Agent>, ControlError> {
        self.agent
            .lock()
            .map_err(|_| ControlError::Failed("the agent's state is poisoned".into()))
    }

    fn status(&self) -> Result<Status, ControlError> {
        let (mut status, path) = {
            let mut agent = self.lock()?;
            let kernel = KernelStatus::read(&mut agent).map_err(failed)?;
            (
                status(&agent.state, kernel),
                agent.pins.map_path(maps::OFFENDERS.name),
            )
        };
        // The offender records (up to 65,536) are counted without holding the agent, which
        // meanwhile logs events and answers other requests.
        let records = Dataplane::count_pinned_offenders(&path).map_err(failed)?;
        status.maps.push(MapUsage {
            name: maps::OFFENDERS.name.to_string(),
            entries: records as u64,
            capacity: OFFENDERS_ENTRIES.into(),
        });
        Ok(status)
    }

    fn offenders(&self, top: Option<usize>) -> Result<Offenders, ControlError> {
        let top = top.unwrap_or(DEFAULT_TOP_OFFENDERS);
        if top == 0 {
            return Err(bad("top must be at least 1"));
        }
        let (view, path) = {
            let agent = self.lock()?;
            (
                OffenderView::of(&agent.state),
                agent.pins.map_path(maps::OFFENDERS.name),
            )
        };
        // Read, like the count in `status`, without holding the agent.
        let records = Dataplane::read_pinned_offenders(&path).map_err(failed)?;
        Ok(offenders(&view, records, Clock::now(), top))
    }
}

/// The interfaces the filter is on, read live, with the fallback reasons and warnings
/// their attach gave.
fn attached_with_notes(agent: &Agent) -> Result<Vec<AttachedInterface>> {
    let mut interfaces = dataplane::attached(&agent.pins)?;
    for interface in &mut interfaces {
        if let Some(made) = agent.state.attachments.get(&interface.interface) {
            interface.fallback = made.fallback.clone();
            interface.warnings = made.warnings.clone();
        }
    }
    Ok(interfaces)
}

/// One side of a `plan` or `diff`: a policy and what the maps would hold for it.
struct Planned {
    policy: Policy,
    image: MapImage,
    label: String,
}

impl Planned {
    /// `policy` with the exemptions in force, keeping the group ids the kernel holds.
    fn of(state: &State, policy: Policy, label: String) -> Planned {
        let compiled = policy.compile_with_ids(&group_ids(&state.applied));
        let (image, _) = state.with_exemptions(&compiled);
        Planned {
            policy,
            image,
            label,
        }
    }

    /// A kept generation.
    fn generation(state: &State, generation: u64) -> Result<Planned, ControlError> {
        let text = state.history.text(generation).map_err(failed)?;
        let drop_in = state.history.prefixes_text(generation).map_err(failed)?;
        let name = format!("generation {generation}");
        let drop_in_name = format!("the prefixes of {name}");
        let policy = drop_in::parse(
            &text,
            &name,
            drop_in.as_deref().map(|d| (d, drop_in_name.as_str())),
        )
        .map_err(|e| ControlError::Failed(format!("{name} no longer loads: {e}")))?
        .policy;
        Ok(Planned::of(state, policy, name))
    }

    fn compared(&self) -> plan::Compared<'_> {
        plan::Compared {
            policy: &self.policy,
            image: &self.image,
            label: self.label.clone(),
        }
    }
}

impl AgentHandler {
    /// The uploaded policy, with the prefixes drop-in in force laid over it (as `apply`
    /// would), against the one in force.
    fn plan(&self, upload: PolicyUpload, window: Option<u64>) -> Result<Plan, ControlError> {
        let new = crate::policy::parse(&upload.text, &upload.name).map_err(bad)?;
        let (old, new, seen) = {
            let agent = self.lock()?;
            let state = &agent.state;
            let new = drop_in::over(
                new.policy,
                new.warnings,
                state.drop_in.clone(),
                &state.drop_in_name(),
            )
            .map_err(bad)?
            .policy;
            let label = format!("generation {} (in force)", state.generation);
            (
                Planned {
                    policy: state.policy.clone(),
                    image: state.applied.clone(),
                    label,
                },
                Planned::of(state, new, upload.name.clone()),
                Seen::at(&agent.pins),
            )
        };
        compare(&old, &new, &seen, window)
    }

    /// Two kept generations.
    fn diff(&self, from: u64, to: u64, window: Option<u64>) -> Result<Plan, ControlError> {
        let (old, new, seen) = {
            let agent = self.lock()?;
            let state = &agent.state;
            (
                Planned::generation(state, from)?,
                Planned::generation(state, to)?,
                Seen::at(&agent.pins),
            )
        };
        compare(&old, &new, &seen, window)
    }
}

/// Where the kernel remembers the sources `plan` weighs a change by: the sources seen
/// asking to connect to a filtered port and not blocked (RECENT_SOURCES), and the blocked
/// ones (their offender records).
struct Seen {
    recent: PathBuf,
    offenders: PathBuf,
}

impl Seen {
    fn at(pins: &PinDir) -> Seen {
        Seen {
            recent: pins.map_path(maps::RECENT_SOURCES.name),
            offenders: pins.map_path(maps::OFFENDERS.name),
        }
    }

    /// Every source of both maps, once: a source both blocked and passed (to a relay, or
    /// before a policy change) has its attempts summed and the later last-seen time.
    fn read(&self, clock: &Clock) -> Result<Vec<plan::SeenSource>> {
        let mut seen: BTreeMap<SourceKey, (u64, u64)> = BTreeMap::new();
        let recent = Dataplane::read_pinned_recent_sources(&self.recent)?
            .into_iter()
            .map(|(key, r)| (key, r.attempts, r.last_seen_ns));
        let offenders = Dataplane::read_pinned_offenders(&self.offenders)?
            .into_iter()
            .map(|(key, o)| (key, o.attempts, o.last_seen_ns));
        for (key, attempts, last_seen_ns) in recent.chain(offenders) {
            let entry = seen.entry(key).or_default();
            entry.0 += attempts;
            entry.1 = entry.1.max(last_seen_ns);
        }
        Ok(seen
            .into_iter()
            .map(|(key, (attempts, last_seen_ns))| plan::SeenSource {
                key,
                attempts,
                last_seen: clock.wall_of(last_seen_ns),
            })
            .collect())
    }
}

/// The plan from `old` to `new`, weighed by the sources the kernel remembers (read
/// without holding the agent).
fn compare(
    old: &Planned,
    new: &Planned,
    seen: &Seen,
    window: Option<u64>,
) -> Result<Plan, ControlError> {
    let window = Duration::from_secs(window.unwrap_or(PLAN_WINDOW_SECONDS));
    let clock = Clock::now();
    let seen = seen.read(&clock).map_err(failed)?;
    Ok(plan::plan(
        &old.compared(),
        &new.compared(),
        &seen,
        window,
        clock.wall,
    ))
}

/// What `status` reads from the kernel.
struct KernelStatus {
    pin_path: PathBuf,
    interfaces: Vec<AttachedInterface>,
    capacity: Capacity,
    slots_used: usize,
    stats: Stats,
}

impl KernelStatus {
    fn read(agent: &mut Agent) -> Result<KernelStatus> {
        Ok(KernelStatus {
            pin_path: agent.pins.root().to_path_buf(),
            interfaces: attached_with_notes(agent)?,
            capacity: agent.dataplane.capacity()?,
            slots_used: agent.dataplane.interface_slots()?.len(),
            stats: counters(agent)?.stats,
        })
    }
}

/// The agent, the policy in force, the maps (the offender records are added by the
/// caller) and the totals.
fn status(state: &State, kernel: KernelStatus) -> Status {
    let KernelStatus {
        pin_path,
        interfaces,
        capacity,
        slots_used,
        stats,
    } = kernel;
    let count = |reason: Reason| {
        stats
            .by_reason
            .iter()
            .filter(|r| r.reason == reason)
            .map(|r| r.packets)
            .sum::<u64>()
    };
    let applied = &state.applied;
    let config = &applied.config;
    let map = |name: &str, entries: usize, capacity: u32| MapUsage {
        name: name.to_string(),
        entries: entries as u64,
        capacity: capacity.into(),
    };
    Status {
        agent: AgentInfo {
            pid: Some(std::process::id()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: timestamp(state.started_at),
            pin_path,
        },
        program_id: interfaces.first().map(|i| i.program_id),
        interfaces,
        policy: PolicyStatus {
            file: state.policy_file(),
            sha256: state.policy_sha256.clone(),
            loaded_at: timestamp(state.policy_loaded_at),
            generation: state.generation,
            mode: state.policy.mode,
            groups: state.policy.groups.len(),
            prefixes: state.policy.prefix_count(),
            relays: state.policy.relays.len(),
            ports: state.policy.ports.clone(),
            action: if config.reject() {
                Action::Reject
            } else {
                Action::Drop
            },
            relay_limit: RelayLimit::of(config),
            offenders: offender_alerts(AlertSettings::of(config)),
            events: EventRate::of(config),
            drop_in: state.drop_in_text.as_ref().map(|text| {
                let (added, removed) = state.drop_in.counts();
                DropInStatus {
                    file: state.drop_in_file().unwrap_or_default(),
                    sha256: crate::policy::sha256_hex(text.as_bytes()),
                    added,
                    removed,
                }
            }),
        },
        last_reload: LastReload {
            ok: state.last_reload.ok,
            at: timestamp(state.last_reload.at),
            message: state.last_reload.message.clone(),
        },
        maps: vec![
            map(
                maps::SOURCES_V4.name,
                applied.sources_v4.len(),
                capacity.sources_v4,
            ),
            map(
                maps::SOURCES_V6.name,
                applied.sources_v6.len(),
                capacity.sources_v6,
            ),
            map(maps::GROUP_NAMES.name, applied.groups.len(), MAX_GROUPS),
            map(maps::INTERFACE_SLOTS.name, slots_used, MAX_INTERFACES),
        ],
        exemptions: state.exemptions.len(),
        sessions: state.subscribers.sessions.len(),
        subscriber_exemptions: state.subscribers.exemptions.len(),
        source: Some(source_status(state)),
        counters: StatusCounters {
            packets: stats.by_reason.iter().map(|r| r.packets).sum(),
            blocked: count(Reason::Blocked),
            monitored: count(Reason::Monitored),
            malformed: count(Reason::Malformed),
            rate_limited: count(Reason::RateLimited),
            resets_sent: stats.actions.resets_sent,
            events_sent: stats.actions.events_sent,
            events_suppressed: stats.actions.events_suppressed,
            events_lost: stats.actions.events_lost,
            offender_alerts: stats.actions.offender_alerts,
            offenders_over_threshold: stats.offenders_over_threshold,
        },
    }
}

/// The policy file, or the URL with its last fetch.
fn source_status(state: &State) -> SourceStatus {
    match (&state.source, &state.fetch) {
        (_, Some(fetch)) => SourceStatus::Url {
            url: fetch.url.clone(),
            key: fetch.key.clone(),
            key_id: fetch.key_id.clone(),
            poll_seconds: fetch.poll.as_secs(),
            cache: fetch.cache.clone(),
            etag: fetch.etag.clone(),
            last_fetch: fetch.last.clone(),
        },
        (PolicySource::File { path, watch }, None) => SourceStatus::File {
            path: path.clone(),
            watched: *watch,
        },
        (PolicySource::Url(url), None) => SourceStatus::Url {
            url: url.url.clone(),
            key: url.key.clone(),
            key_id: String::new(),
            poll_seconds: url.poll.as_secs(),
            cache: PathBuf::new(),
            etag: None,
            last_fetch: None,
        },
    }
}

/// The generations kept and the pending rollback.
fn history(state: &State) -> History {
    History {
        current: Some(state.generation),
        pending: state.pending.get().cloned(),
        generations: state.history.generations().to_vec(),
    }
}

/// The offender alert threshold and window in force, if alerts are on.
fn offender_alerts(settings: AlertSettings) -> Option<OffenderAlerts> {
    (settings.threshold != 0).then(|| OffenderAlerts {
        alert_after: settings.threshold,
        window: offenders::duration_text(settings.window_ns),
    })
}

/// A CLI exemption as listed.
fn cli_entry(e: &Exemption) -> ExemptionEntry {
    ExemptionEntry {
        prefix: e.prefix,
        source: ExemptionSource::Cli,
        reason: e.reason.clone(),
        added_by: e.added_by.clone(),
        added_at: timestamp(e.added_at),
        expires_at: e.expires_at.map(timestamp),
    }
}

/// A session as listed.
fn session_entry(state: &State, s: &Session) -> SessionEntry {
    SessionEntry {
        subscriber: s.subscriber.clone(),
        feed: s.key.feed,
        nas: s.key.nas.clone(),
        session_id: s.key.session_id.clone(),
        addresses: s.addresses.clone(),
        started_at: timestamp(s.started_at),
        updated_at: timestamp(s.updated_at),
        exempt: state.subscribers.exemptions.get(&s.subscriber).is_some(),
    }
}

/// Every session, by subscriber name.
fn session_list(state: &State) -> SessionList {
    let mut sessions: Vec<SessionEntry> = state
        .subscribers
        .sessions
        .iter()
        .map(|s| session_entry(state, s))
        .collect();
    sessions.sort_by(|a, b| (&a.subscriber, &a.session_id).cmp(&(&b.subscriber, &b.session_id)));
    SessionList { sessions }
}

/// An exemption by subscriber as listed, with the addresses it is in force on now.
fn subscriber_entry(state: &State, e: &SubscriberExemption) -> SubscriberExemptionEntry {
    SubscriberExemptionEntry {
        subscriber: e.subscriber.clone(),
        addresses: state.subscribers.addresses_of(&e.subscriber),
        reason: e.reason.clone(),
        added_by: e.added_by.clone(),
        added_at: timestamp(e.added_at),
        expires_at: e.expires_at.map(timestamp),
    }
}

/// The session a `sessions up` request describes, checked. Without a session id the
/// subscriber's name is the id: one hook session per subscriber.
fn session_to_start(
    subscriber: &str,
    addresses: &[String],
    session_id: Option<&str>,
    now: SystemTime,
) -> Result<Session, ControlError> {
    let subscriber = sessions::check_name(subscriber, "subscriber name").map_err(bad)?;
    let session_id = match session_id {
        Some(id) => sessions::check_name(id, "session id").map_err(bad)?,
        None => subscriber.clone(),
    };
    if addresses.is_empty() {
        return Err(bad("a session needs at least one address (--address ADDR)"));
    }
    if addresses.len() > sessions::MAX_ADDRESSES {
        return Err(bad(format!(
            "{} addresses; a session holds at most {}",
            addresses.len(),
            sessions::MAX_ADDRESSES
        )));
    }
    let addresses = addresses
        .iter()
        .map(|text| {
            let prefix = exemptions::parse_prefix(text.trim()).map_err(bad)?;
            sessions::check_address(prefix).map_err(bad)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Session {
        key: SessionKey {
            feed: Feed::Hook,
            nas: None,
            session_id,
        },
        subscriber,
        addresses,
        started_at: now,
        updated_at: now,
    })
}

/// Policy allow prefixes (source `policy`), then CLI exemptions (source `cli`).
fn exemption_list(state: &State) -> ExemptionList {
    let image = &state.policy_image;
    let mut list = Vec::new();
    for (&id, group) in &image.groups {
        if group.smtp != Smtp::Allow {
            continue;
        }
        let prefixes = image
            .sources_v4
            .iter()
            .map(|(p, r)| (IpNet::V4(*p), r))
            .chain(image.sources_v6.iter().map(|(p, r)| (IpNet::V6(*p), r)));
        for (prefix, _) in prefixes.filter(|(_, r)| r.group == id) {
            list.push(ExemptionEntry {
                prefix,
                source: ExemptionSource::Policy,
                reason: format!("group {}", group.name),
                added_by: state.source.label(),
                added_at: timestamp(state.policy_loaded_at),
                expires_at: None,
            });
        }
    }
    list.extend(state.exemptions.iter().map(cli_entry));
    ExemptionList {
        exemptions: list,
        subscribers: state
            .subscribers
            .exemptions
            .iter()
            .map(|e| subscriber_entry(state, e))
            .collect(),
    }
}

/// The exemption an add request asks for, checked against the policy in force.
fn exemption_to_add(
    state: &State,
    user: &str,
    prefix: &str,
    reason: &str,
    expires: Option<&str>,
    until: Option<&str>,
    now: SystemTime,
) -> Result<Exemption, ControlError> {
    let exemption =
        exemptions::parse_request(prefix, reason, expires, until, user, now).map_err(bad)?;
    exemptions::check_against_policy(&state.policy_image, exemption.prefix).map_err(bad)?;
    Ok(exemption)
}

/// The prefix a remove request names, if it may be removed.
fn exemption_to_remove(state: &State, prefix: &str) -> Result<IpNet, ControlError> {
    let prefix = exemptions::parse_prefix(prefix).map_err(bad)?;
    state.check_removable(prefix).map_err(failed)?;
    Ok(prefix)
}

/// The reference model's verdict on one flow, with the policy and exemptions in force.
fn explain_flow(
    state: &State,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
) -> Result<Explanation, ControlError> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(bad(format!(
            "--src {src} and --dst {dst} are of different address families"
        )));
    }
    let mut explanation = explain::explain(&state.applied, src, dst, dport);
    explanation.subscriber = state.subscribers.name_at(src).map(str::to_string);
    Ok(explanation)
}

/// What listing the offenders needs from the agent: taken under its lock, used without.
struct OffenderView {
    settings: AlertSettings,
    groups: BTreeMap<u32, String>,
    subscribers: Subscribers,
}

impl OffenderView {
    fn of(state: &State) -> OffenderView {
        OffenderView {
            settings: state.alert_settings(),
            groups: state
                .applied
                .groups
                .iter()
                .map(|(&id, group)| (id, group.name.clone()))
                .collect(),
            subscribers: state.subscribers.clone(),
        }
    }
}

/// The `top` sources most likely infected, and how many the kernel tracks.
fn offenders(
    view: &OffenderView,
    mut records: Vec<(SourceKey, Offender)>,
    clock: Clock,
    top: usize,
) -> Offenders {
    let settings = view.settings;
    offenders::rank(&mut records, settings, clock.monotonic_ns);
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
            OffenderRow {
                subscriber: subscriber_of_key(&view.subscribers, key),
                ..OffenderRow::new(key, record, group, settings, &clock)
            }
        })
        .collect();
    Offenders {
        at: timestamp(clock.wall),
        sources: records.len(),
        over_threshold: over,
        alert_after: settings.threshold,
        window: offenders::duration_text(settings.window_ns),
        destinations_note: "destinations is an estimate (linear counting over a 64-bit sketch): close for a handful, saturated above about 266".to_string(),
        offenders: rows,
    }
}

/// Every counter in the shapes `stats` and the metrics want.
pub struct Counters {
    pub stats: Stats,
    pub snapshot: Snapshot,
}

/// Every counter, summed over CPUs.
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
                by_interface.push(InterfaceCount {
                    interface: name.clone(),
                    family,
                    reason,
                    packets: c.packets,
                    bytes: c.bytes,
                });
                interfaces.push((name.clone(), family, reason, c));
            }
        }
    }
    let mut by_group = Vec::new();
    let mut groups = Vec::new();
    for (&id, group) in &agent.state.applied.groups {
        let counters = agent.dataplane.group_counters(id)?;
        for reason in Reason::ALL {
            let c = counters[reason as usize];
            if c.packets == 0 {
                continue;
            }
            by_group.push(GroupCount {
                group: group.name.clone(),
                exemption_group: id == EXEMPTION_GROUP,
                reason,
                packets: c.packets,
                bytes: c.bytes,
            });
            groups.push((group.name.clone(), reason, c));
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
        exemptions: agent.state.exemptions.len() as u64,
        radius_requests: agent.state.radius.counters.snapshot(),
        sessions: agent.state.subscribers.sessions.len() as u64,
        policy_generation: agent.state.generation,
        last_reload_success: agent.state.last_reload.ok,
        last_reload_time: agent.state.last_reload.at,
        attached_interfaces: Vec::new(),
        automatic_rollbacks: agent.state.automatic_rollbacks,
        policy_fetches: agent
            .state
            .fetch
            .as_ref()
            .map(|f| f.counted())
            .unwrap_or_default(),
    };
    let stats = Stats {
        at: timestamp(SystemTime::now()),
        by_reason: by_reason
            .into_iter()
            .map(|(reason, c)| ReasonCount {
                reason,
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
        by_family: by_family
            .into_iter()
            .map(|(family, c)| FamilyCount {
                family,
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
        by_group,
        by_interface,
        actions,
        offenders_over_threshold: over_threshold,
    };
    Ok(Counters { stats, snapshot })
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
            maps::SOURCES_V4.name.to_string(),
            agent.state.applied.sources_v4.len() as u64,
            capacity.sources_v4 as u64,
        ),
        (
            maps::SOURCES_V6.name.to_string(),
            agent.state.applied.sources_v6.len() as u64,
            capacity.sources_v6 as u64,
        ),
        (
            maps::GROUP_NAMES.name.to_string(),
            agent.state.applied.groups.len() as u64,
            MAX_GROUPS as u64,
        ),
    ];
    snapshot.attached_interfaces = dataplane::attached(&agent.pins)?
        .into_iter()
        .map(|a| AttachedMetric {
            interface: a.interface,
            mode: a.mode,
            attach: a.attach,
            program_id: a.program_id,
        })
        .collect();
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;
    use crate::{
        agent::{
            history::{PendingStore, PolicyHistory},
            state::ReloadResult,
        },
        control::protocol::sorted,
        exemptions::ExemptionStore,
    };

    const POLICY: &str = "version: 1
action: reject
relay_limit: { syn_per_minute: 60, burst: 10 }
offenders: { alert_after: 3, window: 10m }
events: { per_second: 5 }
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.0/10, \"2001:db8:1000::/36\"]
  - name: business
    smtp: allow
    prefixes: [100.64.1.0/24]
relays: [203.0.113.25]
";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// The state right after loading `policy`, with no exemptions; the exemption store
    /// names a file that is never written.
    fn state(policy: &str) -> State {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let loaded = crate::policy::parse(policy, "policy.yaml").unwrap_or_else(|e| panic!("{e}"));
        let image = loaded.policy.compile();
        let store = std::env::temp_dir().join(format!(
            "filter-agent-handler-{}-{}/exemptions.yaml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = store.parent().unwrap().to_path_buf();
        State {
            source: crate::source::PolicySource::File {
                path: "/etc/filter-agent/policy.yaml".into(),
                watch: true,
            },
            fetch: None,
            policy: loaded.policy,
            policy_text: policy.to_string(),
            drop_in: Default::default(),
            drop_in_text: None,
            policy_sha256: "ab".repeat(32),
            policy_loaded_at: at(1_800_000_000),
            policy_image: image.clone(),
            exemptions: ExemptionStore::load(&store).unwrap(),
            applied: image,
            generation: 1,
            history: PolicyHistory::load(&dir.join("history")).unwrap(),
            pending: PendingStore::load(&dir.join("pending-rollback.json")).unwrap(),
            automatic_rollbacks: 0,
            last_reload: ReloadResult {
                ok: true,
                at: at(1_800_000_000),
                message: "generation 1 in force".into(),
            },
            started_at: at(1_799_999_999),
            over_threshold: Default::default(),
            subscribers: Subscribers::load(store.parent().unwrap()).unwrap(),
            sessions_touched: false,
            radius: Default::default(),
            attachments: Default::default(),
        }
    }

    fn stats(by_reason: &[(Reason, u64)]) -> Stats {
        Stats {
            at: "t".into(),
            by_reason: by_reason
                .iter()
                .map(|&(reason, packets)| ReasonCount {
                    reason,
                    packets,
                    bytes: packets * 54,
                })
                .collect(),
            by_family: Vec::new(),
            by_group: Vec::new(),
            by_interface: Vec::new(),
            actions: Actions {
                resets_sent: 4,
                ..Actions::default()
            },
            offenders_over_threshold: 1,
        }
    }

    fn kernel(stats: Stats) -> KernelStatus {
        KernelStatus {
            pin_path: "/sys/fs/bpf/filter-agent".into(),
            interfaces: vec![AttachedInterface {
                interface: "eth1".into(),
                mode: "native".into(),
                attach: "exclusive".into(),
                program_id: 41,
                link_id: 7,
                fallback: None,
                warnings: Vec::new(),
                chain: Vec::new(),
            }],
            capacity: Capacity {
                sources_v4: 1024,
                sources_v6: 1024,
            },
            slots_used: 1,
            stats,
        }
    }

    #[test]
    fn status_after_a_policy_load_shows_the_policy_in_force_and_the_totals() {
        let state = state(POLICY);
        let status = status(
            &state,
            kernel(stats(&[(Reason::Blocked, 5), (Reason::Relay, 2)])),
        );
        assert_eq!(status.program_id, Some(41));
        assert_eq!(status.agent.started_at, "2027-01-15T07:59:59Z");
        let policy = &status.policy;
        assert_eq!(policy.file, PathBuf::from("/etc/filter-agent/policy.yaml"));
        assert_eq!(policy.loaded_at, "2027-01-15T08:00:00Z");
        assert_eq!((policy.groups, policy.prefixes, policy.relays), (2, 3, 1));
        assert_eq!(policy.action, Action::Reject);
        assert_eq!(
            policy.relay_limit,
            Some(RelayLimit {
                syn_per_minute: 60,
                burst: 10
            })
        );
        assert_eq!(
            policy.offenders,
            Some(OffenderAlerts {
                alert_after: 3,
                window: "10m".into()
            })
        );
        assert_eq!(
            policy.events,
            Some(EventRate {
                per_second: 5,
                burst: 5
            })
        );
        assert_eq!((status.counters.packets, status.counters.blocked), (7, 5));
        assert_eq!(status.counters.resets_sent, 4);
        assert_eq!(status.counters.offenders_over_threshold, 1);
        let maps: Vec<(&str, u64, u64)> = status
            .maps
            .iter()
            .map(|m| (m.name.as_str(), m.entries, m.capacity))
            .collect();
        assert_eq!(
            maps,
            [
                (maps::SOURCES_V4.name, 2, 1024),
                (maps::SOURCES_V6.name, 1, 1024),
                (maps::GROUP_NAMES.name, 2, u64::from(MAX_GROUPS)),
                (maps::INTERFACE_SLOTS.name, 1, u64::from(MAX_INTERFACES)),
            ]
        );
    }

    #[test]
    fn status_on_the_wire_has_sorted_keys_and_nulls_for_what_is_off() {
        let state = state(
            "version: 1\nevents: { per_second: 0 }\ngroups:\n  - name: residential\n    smtp: block\n    prefixes: [100.64.0.0/10]\n",
        );
        let status = status(&state, kernel(stats(&[])));
        let text = serde_json::to_string(&sorted(&status).unwrap()).unwrap();
        assert!(text.starts_with(r#"{"agent":{"pid":"#), "{text}");
        assert!(
            text.contains(
                r#""action":"drop","drop_in":null,"events":null,"file":"/etc/filter-agent/policy.yaml""#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#""mode":"enforce","offenders":null,"ports":[25],"prefixes":1,"relay_limit":null,"relays":0"#),
            "{text}"
        );
        assert!(
            text.contains(r#""last_reload":{"at":"2027-01-15T08:00:00Z","message":"generation 1 in force","ok":true}"#),
            "{text}"
        );
    }

    fn exemption(state: &State, prefix: &str) -> Result<Exemption, ControlError> {
        exemption_to_add(
            state,
            "alice",
            prefix,
            "ticket 42",
            Some("2h"),
            None,
            at(1_800_000_000),
        )
    }

    #[test]
    fn exemptions_list_the_policy_allow_prefixes_then_the_cli_ones() {
        let mut state = state(POLICY);
        let granted = exemption(&state, "100.64.9.9").unwrap();
        state.exemptions.insert(granted).unwrap();
        let list = exemption_list(&state).exemptions;
        assert_eq!(
            list,
            [
                ExemptionEntry {
                    prefix: "100.64.1.0/24".parse().unwrap(),
                    source: ExemptionSource::Policy,
                    reason: "group business".into(),
                    added_by: "/etc/filter-agent/policy.yaml".into(),
                    added_at: "2027-01-15T08:00:00Z".into(),
                    expires_at: None,
                },
                ExemptionEntry {
                    prefix: "100.64.9.9/32".parse().unwrap(),
                    source: ExemptionSource::Cli,
                    reason: "ticket 42".into(),
                    added_by: "alice".into(),
                    added_at: "2027-01-15T08:00:00Z".into(),
                    expires_at: Some("2027-01-15T10:00:00Z".into()),
                },
            ]
        );
        let text =
            serde_json::to_string(&sorted(&ExemptionChange::Added(list[1].clone())).unwrap())
                .unwrap();
        assert_eq!(
            text,
            r#"{"added":{"added_at":"2027-01-15T08:00:00Z","added_by":"alice","expires_at":"2027-01-15T10:00:00Z","prefix":"100.64.9.9/32","reason":"ticket 42","source":"cli"}}"#
        );
    }

    #[test]
    fn an_exemption_outside_a_block_group_or_badly_written_is_a_bad_request() {
        let state = state(POLICY);
        for (prefix, message) in [
            ("203.0.113.0/24", "203.0.113.0/24 is in no group"),
            ("100.64.1.7/32", "100.64.1.7/32 is in group business"),
            ("100.64.0.1/8", "host bits"),
            ("nonsense", "\"nonsense\" is not an IP address or prefix"),
        ] {
            match exemption(&state, prefix) {
                Err(ControlError::BadRequest(m)) => assert!(m.contains(message), "{prefix}: {m}"),
                other => panic!("{prefix}: {other:?}"),
            }
        }
        let refused = exemption_to_add(&state, "alice", "100.64.9.9", " ", None, None, at(0));
        assert!(matches!(refused, Err(ControlError::BadRequest(m)) if m.contains("reason")));
    }

    #[test]
    fn only_cli_exemptions_may_be_removed() {
        let mut state = state(POLICY);
        state
            .exemptions
            .insert(exemption(&state, "100.64.9.9").unwrap())
            .unwrap();
        assert_eq!(
            exemption_to_remove(&state, "100.64.9.9/32"),
            Ok("100.64.9.9/32".parse().unwrap())
        );
        assert_eq!(
            exemption_to_remove(&state, "100.64.0.0/10"),
            Err(ControlError::Failed(
                "100.64.0.0/10 is not a CLI exemption: it is a prefix of the policy's group \
                 residential; change the policy to remove it"
                    .into()
            ))
        );
        // Neither: the store says so when asked to remove it.
        assert!(exemption_to_remove(&state, "100.64.7.7/32").is_ok());
        assert!(matches!(
            exemption_to_remove(&state, "100.64.7.7/33"),
            Err(ControlError::BadRequest(_))
        ));
    }

    #[test]
    fn explain_uses_the_applied_image_and_refuses_mixed_families() {
        let state = state(POLICY);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let e = explain_flow(&state, ip("100.64.9.9"), ip("203.0.113.9"), 25).unwrap();
        assert_eq!(
            (e.verdict, e.reason, e.group.as_deref(), e.action),
            (
                filter_common::Verdict::Reject,
                Reason::Blocked,
                Some("residential"),
                Action::Reject
            )
        );
        assert_eq!(
            explain_flow(&state, ip("100.64.9.9"), ip("2001:db8::9"), 25),
            Err(ControlError::BadRequest(
                "--src 100.64.9.9 and --dst 2001:db8::9 are of different address families".into()
            ))
        );
    }

    #[test]
    fn offenders_are_ranked_by_the_current_window_then_overall() {
        const MINUTE: u64 = 60_000_000_000;
        let state = state(POLICY);
        let view = OffenderView::of(&state);
        let clock = Clock {
            monotonic_ns: 1_000 * MINUTE,
            wall: at(1_800_000_000),
        };
        let source = |last: u8| SourceKey::from_ip(IpAddr::from([100, 64, 0, last]));
        let record = |attempts: u64, window_attempts: u64, window_start_ns: u64| Offender {
            attempts,
            window_attempts,
            window_start_ns,
            first_seen_ns: window_start_ns,
            last_seen_ns: window_start_ns,
            group: 1,
            ..Offender::default()
        };
        let now = clock.monotonic_ns;
        let records = vec![
            // Many attempts, but in a window that has ended.
            (source(1), record(500, 400, now - 20 * MINUTE)),
            // Over the threshold in the current window.
            (source(2), record(5, 5, now - MINUTE)),
            (source(3), record(2, 2, now - MINUTE)),
        ];
        let reply = offenders(&view, records.clone(), clock, 2);
        assert_eq!((reply.sources, reply.over_threshold), (3, 1));
        assert_eq!((reply.alert_after, reply.window.as_str()), (3, "10m"));
        let rows: Vec<(&str, u64, bool)> = reply
            .offenders
            .iter()
            .map(|o| (o.source.as_str(), o.in_window, o.over_threshold))
            .collect();
        assert_eq!(rows, [("100.64.0.2", 5, true), ("100.64.0.3", 2, false)]);
        assert_eq!(reply.offenders[0].group, "residential");
        let all = offenders(&view, records, clock, 10);
        assert_eq!(all.offenders[2].source, "100.64.0.1");
        assert_eq!(all.offenders[2].in_window, 0);
    }
}
