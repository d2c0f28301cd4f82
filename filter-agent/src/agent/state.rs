//! The agent's view of what is in force: the policy, the CLI exemptions, and the image the
//! maps hold. Every change goes through `apply`, which syncs the maps and attachments.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Instant, SystemTime},
};

use anyhow::{Result, bail};
use filter_common::{Action, Event, EventKind, SourceKey};
use ipnet::IpNet;
use log::{debug, error, info, warn};

use super::{
    check_interfaces,
    clock::{self, Clock},
    events::{self, Names},
    fetch::FetchState,
    history::{Origin, PendingStore, PolicyHistory},
    ifindex, logging,
    offenders::{AlertSettings, OverThreshold},
};
use crate::{
    control::protocol::Applied,
    dataplane::{self, AttachedInterface, Dataplane, PinDir},
    drop_in::{self, DropIn},
    exemptions::{self, Exemption, ExemptionStore},
    image::MapImage,
    policy::{self, Policy},
    source::PolicySource,
    subscribers::{
        self, Session, SubscriberExemption, Subscribers,
        accounting::{Change, Clients, Counters},
    },
};

/// The outcome of the last (re)load, for `status` and metrics.
#[derive(Clone, Debug)]
pub struct ReloadResult {
    pub ok: bool,
    pub at: SystemTime,
    pub message: String,
}

/// The running agent: the kernel objects it writes, and what it holds in force.
pub struct Agent {
    pub pins: PinDir,
    pub dataplane: Dataplane,
    pub state: State,
}

/// What is in force, as plain data: everything a reply reads that is not in the kernel.
pub struct State {
    /// Where the policy comes from: a file, or a URL (then `fetch` is set).
    pub source: PolicySource,
    pub fetch: Option<FetchState>,
    /// The policy in force, its text, its hash and when it was loaded.
    pub policy: Policy,
    pub policy_text: String,
    pub policy_sha256: String,
    pub policy_loaded_at: SystemTime,
    /// The prefixes drop-in laid over `policy_text` (`prefixes add` and `remove`), and
    /// its text (`None`: there is none); `policy` and `policy_image` include it.
    pub drop_in: DropIn,
    pub drop_in_text: Option<String>,
    /// The policy compiled alone: what exemptions are checked against.
    pub policy_image: MapImage,
    pub exemptions: ExemptionStore,
    /// What the maps hold: read from the kernel at start, then the image last applied
    /// (this agent is the maps' only writer), so a reload diffs without reading them back.
    pub applied: MapImage,
    /// The generation in force (the history's last, unless recording it failed).
    pub generation: u64,
    pub history: PolicyHistory,
    /// The rollback of an unconfirmed change, if one is due.
    pub pending: PendingStore,
    /// Unconfirmed changes this agent rolled back by itself.
    pub automatic_rollbacks: u64,
    pub last_reload: ReloadResult,
    pub started_at: SystemTime,
    /// Sources that raised an offender alert whose window has not ended.
    pub over_threshold: OverThreshold,
    /// Who is online with which addresses, and who is exempt by name.
    pub subscribers: Subscribers,
    /// Interim-Updates moved session times the sessions file does not have yet.
    pub sessions_touched: bool,
    pub radius: RadiusState,
    /// Each interface's attachment as it was made or taken over: its fallback reason and
    /// warnings, which only the attach could learn (`status` reads the rest live).
    pub attachments: BTreeMap<String, AttachedInterface>,
}

/// The RADIUS accounting listener as the policy in force wants it.
#[derive(Debug, Default)]
pub struct RadiusState {
    /// The address listened on, if any.
    pub listen: Option<SocketAddr>,
    /// A socket bound for a new listen address, for the main loop to serve.
    pub bound: Option<std::net::UdpSocket>,
    /// The clients and secrets in force, shared with the listener.
    pub clients: Arc<RwLock<Clients>>,
    pub counters: Arc<Counters>,
}

/// Which sessions `sessions down` ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionSelector {
    Subscriber(String),
    SessionId(String),
}

/// The group ids an image uses, by name: what a recompile keeps.
pub fn group_ids(image: &MapImage) -> BTreeMap<String, u32> {
    image
        .groups
        .iter()
        .map(|(&id, g)| (g.name.clone(), id))
        .collect()
}

impl Agent {
    /// Makes the kernel match `policy` (compiled, keeping the ids of
    /// `self.state.applied`) plus the exemptions: maps first (hole-free), then attachments,
    /// as `generation`. On error nothing of `policy` is kept as "in force".
    pub fn apply_image(
        &mut self,
        policy: Policy,
        policy_image: MapImage,
        sha256: String,
        generation: u64,
    ) -> Result<()> {
        let started = Instant::now();
        check_interfaces(&policy)?;
        let radius = policy.subscribers.radius_accounting.as_ref();
        let clients = match radius {
            Some(radius) => super::radius_clients(radius)?,
            None => Clients::default(),
        };
        let listen = radius.map(|r| r.listen);
        let bound = match listen {
            Some(addr) if Some(addr) != self.state.radius.listen => Some(
                std::net::UdpSocket::bind(addr)
                    .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
                    .map_err(|e| {
                        anyhow::anyhow!("cannot listen for RADIUS accounting on {addr}: {e}")
                    })?,
            ),
            _ => None,
        };
        let report = self.sync(&policy_image)?;
        let reject = policy.action == Action::Reject;
        for interface in &policy.interfaces {
            let attached = self.dataplane.attach(&self.pins, interface, reject)?;
            self.state
                .attachments
                .insert(interface.name.clone(), attached);
            self.dataplane
                .assign_interface_slot(&interface.name, ifindex(&interface.name)?)?;
        }
        // Interfaces the policy no longer lists: ours comes off them, nothing else does.
        let wanted = |name: &str| policy.interfaces.iter().any(|i| i.name == name);
        let mut gone: BTreeSet<String> = self.state.attachments.keys().cloned().collect();
        gone.extend(self.pins.pinned_links()?.into_iter().map(|(name, _)| name));
        gone.extend(
            dataplane::components(&self.pins)?
                .into_iter()
                .map(|(name, ..)| name),
        );
        gone.retain(|name| !wanted(name));
        for name in gone {
            self.pins.detach_interface(&name)?;
            dataplane::detach_components(&self.pins, Some(&name))?;
            self.state.attachments.remove(&name);
            self.dataplane.release_interface_slot(&name)?;
        }
        self.state.generation = generation;
        info!(
            "policy={} generation={} groups={} prefixes={} relays={} exemptions={} {report} applied_ms={}",
            self.state.source.label(),
            self.state.generation,
            policy.groups.len(),
            policy.prefix_count(),
            policy.relays.len(),
            self.state.exemptions.len(),
            started.elapsed().as_millis()
        );
        *self
            .state
            .radius
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = clients;
        if bound.is_some() {
            self.state.radius.bound = bound;
        }
        self.state.radius.listen = listen;
        self.state.policy = policy;
        self.state.policy_image = policy_image;
        self.state.policy_sha256 = sha256;
        self.state.policy_loaded_at = SystemTime::now();
        Ok(())
    }

    /// Syncs the maps to `policy_image` plus the exemptions.
    pub(super) fn sync(&mut self, policy_image: &MapImage) -> Result<crate::dataplane::SyncReport> {
        let (want, skipped) = self.state.with_exemptions(policy_image);
        for skipped in skipped {
            warn!(
                "exemption {skipped} is now a prefix of the policy itself; the policy's entry applies"
            );
        }
        let report = self.dataplane.sync_from(&self.state.applied, &want);
        if report.is_err() {
            // A failed sync may have applied part of the plan: learn what the maps hold.
            self.state.applied = self.dataplane.read_image()?;
        } else {
            self.state.applied = want;
        }
        report
    }

    /// Re-reads the policy file and applies it; the outcome is also kept for `status`.
    pub fn reload(&mut self, origin: Origin) -> Result<Applied> {
        info!("reload requested ({})", origin.how.name());
        let started = Instant::now();
        let PolicySource::File { path, .. } = self.state.source.clone() else {
            bail!("the policy comes from a URL: it is fetched, not read from a file");
        };
        let result = policy::read(&path)
            .and_then(|text| Ok((text, drop_in::read_beside(&path)?)))
            .map_err(anyhow::Error::from)
            .and_then(|(text, drop_in)| {
                let drop_in = drop_in.map(|(text, _)| text);
                self.change_to(text, drop_in, &path.display().to_string(), origin)
            });
        self.state.last_reload = match &result {
            Ok(_) => {
                info!(
                    "reload done in {} ms (parse, validate, sync)",
                    started.elapsed().as_millis()
                );
                ReloadResult {
                    ok: true,
                    at: SystemTime::now(),
                    message: format!("generation {} in force", self.state.generation),
                }
            }
            Err(err) => {
                for line in format!("{err:#}").lines() {
                    error!("reload refused: {line}");
                }
                error!("reload refused: the running policy stays in force unchanged");
                ReloadResult {
                    ok: false,
                    at: SystemTime::now(),
                    message: super::one_line(&format!("{err:#}")),
                }
            }
        };
        result
    }

    /// Grants an exemption: checked, persisted, then applied.
    pub fn add_exemption(&mut self, exemption: Exemption) -> Result<()> {
        exemptions::check_against_policy(&self.state.policy_image, exemption.prefix)?;
        self.state.exemptions.insert(exemption.clone())?;
        if let Err(err) = self.state.exemptions.save() {
            self.state.exemptions.remove(exemption.prefix)?;
            return Err(err.context("persisting the exemption; nothing changed"));
        }
        let policy_image = self.state.policy_image.clone();
        if let Err(err) = self.sync(&policy_image) {
            // Keep the state file and the kernel in agreement.
            self.state.exemptions.remove(exemption.prefix)?;
            self.state.exemptions.save()?;
            return Err(err.context("applying the exemption; it was not granted"));
        }
        info!(
            "exemption added prefix={} by={} reason={:?} expires={}",
            exemption.prefix,
            exemption.added_by,
            exemption.reason,
            exemption
                .expires_at
                .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_else(|| "never".into())
        );
        Ok(())
    }

    /// Revokes a CLI exemption (see [`State::check_removable`]): persisted, then applied.
    pub fn remove_exemption(&mut self, prefix: IpNet, by: &str) -> Result<Exemption> {
        let removed = self.state.exemptions.remove(prefix)?;
        self.state.exemptions.save()?;
        let policy_image = self.state.policy_image.clone();
        self.sync(&policy_image)?;
        info!("exemption removed prefix={prefix} by={by}");
        Ok(removed)
    }

    /// Removes the exemptions whose time is up.
    pub fn expire_exemptions(&mut self) {
        let expired = self.state.exemptions.take_expired(SystemTime::now());
        if expired.is_empty() {
            return;
        }
        let result = self.state.exemptions.save().and_then(|()| {
            let policy_image = self.state.policy_image.clone();
            self.sync(&policy_image)
        });
        for exemption in &expired {
            match &result {
                Ok(_) => info!(
                    "exemption expired prefix={} reason={:?} added_by={}",
                    exemption.prefix, exemption.reason, exemption.added_by
                ),
                Err(err) => error!(
                    "exemption {} expired but could not be removed: {err:#}",
                    exemption.prefix
                ),
            }
        }
    }

    /// Changes the sessions or subscriber exemptions with `change`, then persists and
    /// applies the result; on any error the previous state is restored, in the files and
    /// in the kernel, and the error returned.
    fn change_subscribers<R>(
        &mut self,
        change: impl FnOnce(&mut Subscribers) -> Result<R>,
    ) -> Result<R> {
        let before = self.state.subscribers.clone();
        let result = change(&mut self.state.subscribers).and_then(|r| {
            self.save_subscribers(&before)?;
            let policy_image = self.state.policy_image.clone();
            self.sync(&policy_image)?;
            Ok(r)
        });
        if result.is_err() {
            let failed = std::mem::replace(&mut self.state.subscribers, before);
            if let Err(err) = self.save_subscribers(&failed) {
                error!("restoring the subscriber files after a failed change: {err:#}");
            }
            let policy_image = self.state.policy_image.clone();
            if let Err(err) = self.sync(&policy_image) {
                error!("restoring the kernel after a failed subscriber change: {err:#}");
            }
        }
        result
    }

    /// Writes the subscriber files that differ from `before`.
    fn save_subscribers(&mut self, before: &Subscribers) -> Result<()> {
        let now = &self.state.subscribers;
        if now.sessions != before.sessions || self.state.sessions_touched {
            now.sessions.save()?;
            self.state.sessions_touched = false;
        }
        if now.exemptions != before.exemptions {
            now.exemptions.save()?;
        }
        Ok(())
    }

    /// A session starts or changes its addresses (`sessions up`, a RADIUS Start or
    /// Interim-Update). Returns notes for the caller: addresses where an exemption has
    /// nothing to do.
    pub fn session_up(&mut self, session: Session) -> Result<Vec<String>> {
        let notes: Vec<String> = session
            .addresses
            .iter()
            .filter_map(|&a| subscribers::note_for(&self.state.policy_image, a))
            .map(|note| format!("session {} of {}: {note}", session.key, session.subscriber))
            .collect();
        let logged = session.clone();
        let report = self.change_subscribers(|subscribers| Ok(subscribers.sessions.up(session)))?;
        for (address, from, subscriber) in &report.moved {
            warn!(
                "session address {address} claimed by two sessions: the newest wins, {} (subscriber={}) over {from} (subscriber={})",
                logged.key,
                events::value(&logged.subscriber),
                events::value(subscriber)
            );
        }
        for emptied in &report.emptied {
            info!(
                "session ended session={} subscriber={}: its last address went to a newer session",
                emptied.key,
                events::value(&emptied.subscriber)
            );
        }
        let addresses: Vec<String> = logged.addresses.iter().map(ToString::to_string).collect();
        info!(
            "session {} session={} subscriber={} addresses=[{}]{}",
            if report.previous.is_some() {
                "updated"
            } else {
                "up"
            },
            logged.key,
            events::value(&logged.subscriber),
            addresses.join(","),
            if self
                .state
                .subscribers
                .exemptions
                .get(&logged.subscriber)
                .is_some()
            {
                " exempt=yes"
            } else {
                ""
            }
        );
        for note in &notes {
            info!("{note}");
        }
        Ok(notes)
    }

    /// Ends the sessions `selector` picks (`sessions down`); none is an error.
    pub fn sessions_down(&mut self, selector: &SessionSelector, why: &str) -> Result<Vec<Session>> {
        let ended = self.change_subscribers(|subscribers| {
            let ended = subscribers.sessions.remove_where(|s| match selector {
                SessionSelector::Subscriber(name) => &s.subscriber == name,
                SessionSelector::SessionId(id) => {
                    s.key.feed == subscribers::Feed::Hook && &s.key.session_id == id
                }
            });
            if ended.is_empty() {
                bail!(
                    "no session {}",
                    match selector {
                        SessionSelector::Subscriber(name) => format!("of subscriber {name}"),
                        SessionSelector::SessionId(id) => format!("with session id {id}"),
                    }
                );
            }
            Ok(ended)
        })?;
        for session in &ended {
            log_ended(session, why);
        }
        Ok(ended)
    }

    /// Applies what an accounting request says (see [`Change`]).
    pub fn apply_accounting(&mut self, change: Change, now: SystemTime) -> Result<()> {
        match change {
            Change::Up {
                key,
                subscriber,
                addresses,
                status,
            } => {
                let known = self.state.subscribers.sessions.get(&key);
                let unchanged = known.is_some_and(|s| {
                    s.subscriber == subscriber
                        && (addresses.is_empty() || {
                            let mut sorted = addresses.clone();
                            sorted.sort();
                            sorted.dedup();
                            s.addresses == sorted
                        })
                });
                if unchanged {
                    self.state.subscribers.sessions.touch(&key, now);
                    self.state.sessions_touched = true;
                    return Ok(());
                }
                if addresses.is_empty() {
                    debug!(
                        "radius {} for {key} without an address: nothing to record",
                        status.name()
                    );
                    return Ok(());
                }
                self.session_up(Session {
                    key,
                    subscriber,
                    addresses,
                    started_at: now,
                    updated_at: now,
                })
                .map(|_| ())
            }
            Change::Stop { key } => {
                let ended = self.change_subscribers(|s| Ok(s.sessions.remove(&key)))?;
                match ended {
                    Some(session) => log_ended(&session, "radius Stop"),
                    None => debug!("radius Stop for {key}, which is not known"),
                }
                Ok(())
            }
            Change::NasRestart { nas, status } => {
                let ended = self.change_subscribers(|s| {
                    Ok(s.sessions.remove_where(|session| {
                        session.key.feed == subscribers::Feed::Radius
                            && session.key.nas.as_deref() == Some(nas.as_str())
                    }))
                })?;
                info!(
                    "radius {} from nas={nas}: {} sessions ended",
                    status.name(),
                    ended.len()
                );
                for session in &ended {
                    log_ended(session, status.name());
                }
                Ok(())
            }
        }
    }

    /// Grants an exemption by subscriber name: persisted, then applied to the addresses
    /// the subscriber holds now (and to those of every later session).
    pub fn add_subscriber_exemption(&mut self, exemption: SubscriberExemption) -> Result<()> {
        let logged = exemption.clone();
        self.change_subscribers(|s| Ok(s.exemptions.insert(exemption)?))?;
        let addresses: Vec<String> = self
            .state
            .subscribers
            .addresses_of(&logged.subscriber)
            .iter()
            .map(ToString::to_string)
            .collect();
        info!(
            "exemption added subscriber={} addresses=[{}] by={} reason={:?} expires={}",
            events::value(&logged.subscriber),
            addresses.join(","),
            logged.added_by,
            logged.reason,
            logged
                .expires_at
                .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_else(|| "never".into())
        );
        Ok(())
    }

    pub fn remove_subscriber_exemption(
        &mut self,
        subscriber: &str,
        by: &str,
    ) -> Result<SubscriberExemption> {
        let removed = self.change_subscribers(|s| Ok(s.exemptions.remove(subscriber)?))?;
        info!(
            "exemption removed subscriber={} by={by}",
            events::value(subscriber)
        );
        Ok(removed)
    }

    /// Once a second: subscriber exemptions whose time is up, RADIUS sessions past the
    /// timeout, and session times from Interim-Updates written out.
    pub fn expire_subscribers(&mut self) {
        let now = SystemTime::now();
        let timeout = self.state.policy.subscribers.session_timeout;
        let subscribers = &self.state.subscribers;
        let due = subscribers
            .exemptions
            .iter()
            .any(|e| e.expires_at.is_some_and(|at| at <= now))
            || timeout.is_some_and(|timeout| {
                subscribers.sessions.iter().any(|s| {
                    s.key.feed == subscribers::Feed::Radius
                        && now
                            .duration_since(s.updated_at)
                            .is_ok_and(|idle| idle >= timeout)
                })
            });
        if !due {
            if self.state.sessions_touched {
                match self.state.subscribers.sessions.save() {
                    Ok(()) => self.state.sessions_touched = false,
                    Err(err) => error!("saving session times: {err:#}"),
                }
            }
            return;
        }
        let result = self.change_subscribers(|s| {
            let expired = s.exemptions.take_expired(now);
            let stale = match timeout {
                Some(timeout) => s.sessions.take_stale(now, timeout),
                None => Vec::new(),
            };
            Ok((expired, stale))
        });
        match result {
            Ok((expired, stale)) => {
                for e in &expired {
                    info!(
                        "exemption expired subscriber={} reason={:?} added_by={}",
                        events::value(&e.subscriber),
                        e.reason,
                        e.added_by
                    );
                }
                for session in &stale {
                    log_ended(session, "session_timeout");
                }
            }
            Err(err) => error!("expiring subscriber exemptions and sessions: {err:#}"),
        }
    }

    /// Logs each event as one line and notes offender alerts.
    pub fn handle_events(&mut self, batch: &[Event]) {
        if batch.is_empty() {
            return;
        }
        let clock = Clock::now();
        let settings = self.alert_settings();
        for event in batch {
            let Some(fields) = events::fields(event, &clock, self, settings) else {
                debug!("event of unknown kind {} ignored", event.kind);
                continue;
            };
            if event.is(EventKind::Offender) {
                logging::event(log::Level::Warn, &fields);
                let Some(key) = event.alert_key() else {
                    continue;
                };
                let record = self.dataplane.offender(&key).ok().flatten();
                self.state.over_threshold.alert(
                    key,
                    OverThreshold::window_end(record.as_ref(), event.time_ns, settings),
                );
            } else {
                logging::event(log::Level::Info, &fields);
            }
        }
    }

    /// Sources over the offender threshold now (forgetting those whose window ended).
    pub fn offenders_over_threshold(&mut self) -> usize {
        if self.alert_settings().threshold == 0 {
            // Alerts were turned off by a reload: nobody is over a threshold.
            self.state.over_threshold = OverThreshold::default();
            return 0;
        }
        let now = clock::monotonic_ns();
        self.state.over_threshold.expire(now);
        self.state.over_threshold.count(now)
    }

    /// Learns the sources over the threshold from the kernel's records, so a restarted
    /// agent reports the same as the one before it.
    pub fn seed_over_threshold(&mut self) -> Result<()> {
        let settings = self.alert_settings();
        if settings.threshold == 0 {
            return Ok(());
        }
        let now = clock::monotonic_ns();
        for (key, record) in self.dataplane.offenders()? {
            if settings.over_threshold(&record, now) {
                self.state.over_threshold.alert(
                    key,
                    record.window_start_ns.saturating_add(settings.window_ns),
                );
            }
        }
        Ok(())
    }

    pub fn alert_settings(&self) -> AlertSettings {
        self.state.alert_settings()
    }
}

impl State {
    /// The prefixes drop-in's file: beside the policy file (none for a URL).
    pub fn drop_in_file(&self) -> Option<PathBuf> {
        match &self.source {
            PolicySource::File { path, .. } => Some(drop_in::path_beside(path)),
            PolicySource::Url(_) => None,
        }
    }

    /// What diagnostics call the drop-in.
    pub fn drop_in_name(&self) -> String {
        self.drop_in_file().map_or_else(
            || "the prefixes drop-in".to_string(),
            |path| path.display().to_string(),
        )
    }

    /// Whether the drop-in on disk differs from the one in force (after a change the
    /// agent did not make itself).
    pub fn drop_in_edited(&self) -> bool {
        let PolicySource::File { path, .. } = &self.source else {
            return false;
        };
        match drop_in::read_beside(path) {
            Ok(on_disk) => on_disk.map(|(text, _)| text) != self.drop_in_text,
            Err(_) => true,
        }
    }

    /// The file that holds the text in force: the policy file, or the cache of the
    /// policy fetched from a URL.
    pub fn policy_file(&self) -> PathBuf {
        match (&self.source, &self.fetch) {
            (_, Some(fetch)) => fetch.cache.clone(),
            (PolicySource::File { path, .. }, None) => path.clone(),
            (PolicySource::Url(url), None) => PathBuf::from(&url.url),
        }
    }

    /// What the maps hold for `policy_image`: it, the CLI exemptions and the subscribers'
    /// exemptions; and the CLI exemptions the policy itself now lists (skipped).
    pub fn with_exemptions(&self, policy_image: &MapImage) -> (MapImage, Vec<IpNet>) {
        let mut want = policy_image.clone();
        let skipped = exemptions::apply(&mut want, &self.exemptions);
        subscribers::apply(&mut want, policy_image, &self.subscribers);
        (want, skipped)
    }

    /// The offender alert settings in force.
    pub fn alert_settings(&self) -> AlertSettings {
        AlertSettings::of(&self.applied.config)
    }

    /// A group's name by id, as logs and listings show it.
    pub fn group_name(&self, id: u32) -> String {
        group_label(self.applied.group(id).map(|g| g.name.as_str()), id)
    }

    /// Refuses to remove a prefix that is the policy's rather than a CLI exemption.
    pub fn check_removable(&self, prefix: IpNet) -> Result<()> {
        if self.exemptions.get(prefix).is_some() {
            return Ok(());
        }
        if let Some(rule) = self.policy_image.source(prefix) {
            let group = self
                .policy_image
                .group(rule.group)
                .map(|g| g.name.as_str())
                .unwrap_or("?");
            bail!(
                "{prefix} is not a CLI exemption: it is a prefix of the policy's group {group}; change the policy to remove it"
            );
        }
        Ok(())
    }
}

impl Names for Agent {
    fn group(&self, id: u32) -> String {
        self.state.group_name(id)
    }

    fn subscriber(&self, source: IpAddr) -> Option<String> {
        self.state.subscribers.name_at(source).map(str::to_string)
    }

    fn interface(&self, ifindex: u32) -> String {
        interface_name(ifindex)
    }
}

/// The subscriber whose session holds an offender key: the IPv4 address, or (any part of)
/// the IPv6 /64.
pub fn subscriber_of_key(subscribers: &Subscribers, source: &SourceKey) -> Option<String> {
    let sessions = &subscribers.sessions;
    match source.ip()? {
        v4 @ IpAddr::V4(_) => sessions.holder_of(v4),
        v6 => sessions.holder_of_prefix(IpNet::new(v6, 64).ok()?),
    }
    .map(|s| s.subscriber.clone())
}

fn log_ended(session: &Session, why: &str) {
    let addresses: Vec<String> = session.addresses.iter().map(ToString::to_string).collect();
    info!(
        "session down session={} subscriber={} addresses=[{}] why={}",
        session.key,
        events::value(&session.subscriber),
        addresses.join(","),
        events::value(why)
    );
}

/// A group's name as logs and listings show it: `-` for none (id 0), `group-N` for an id
/// no longer in use.
pub fn group_label(name: Option<&str>, id: u32) -> String {
    match name {
        Some(name) => name.to_string(),
        None if id == 0 => "-".into(),
        None => format!("group-{id}"),
    }
}

/// The name of an interface of this network namespace; `-` for 0 (a test run), the
/// number if it is gone.
pub fn interface_name(ifindex: u32) -> String {
    if ifindex == 0 {
        return "-".into();
    }
    match nix::net::if_::if_indextoname(ifindex) {
        // nix 0.32 misses libc's NULL return and hands back an empty name for an unknown
        // index.
        Ok(name) if !name.is_empty() => name.to_string_lossy().into_owned(),
        _ => format!("ifindex-{ifindex}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_and_indexes() {
        let lo = ifindex("lo").unwrap();
        assert_eq!(interface_name(lo), "lo");
        assert_eq!(interface_name(0), "-");
        assert_eq!(interface_name(u32::MAX), format!("ifindex-{}", u32::MAX));
        assert_eq!(
            ifindex("no-such-if0").unwrap_err().to_string(),
            "no such interface: no-such-if0"
        );
    }
}
