//! `filter-agent run`: load, adopt, sync, attach, then keep the kernel in step with the
//! policy file (SIGHUP, or the file changing) until told to stop. Stopping leaves the
//! filter attached and enforcing: the kernel holds all state (pinned maps and links), so a
//! restarted agent picks up where this one left off.

mod change;
pub mod clock;
pub mod events;
mod fetch;
mod handler;
mod history;
mod logging;
pub mod offenders;
mod options;
mod pinned;
mod prefixes;
mod state;

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{MapData, RingBuf};
use filter_common::Event;
use log::{error, info, warn};
use notify::Watcher;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    control::{self, protocol::How},
    dataplane::{self, Capacity, Dataplane, PinDir},
    defaults, drop_in,
    exemptions::ExemptionStore,
    image::MapImage,
    metrics,
    policy::{self, Policy, RadiusAccounting},
    source::{PolicySource, fetch as fetch_source},
    subscribers::{
        Subscribers,
        accounting::{self, Client, Clients},
    },
};
pub use history::{HISTORY_KEPT, parse_confirm_within};
use history::{Origin, PendingStore, PolicyHistory};
pub use logging::{LogFormat, init_logging};
pub use options::AgentOptions;
pub use pinned::{Enforcing, PinnedFilter};
use state::{Agent, ReloadResult, State};

/// Debounce for file events: editors write, rename and chmod in a burst.
const SETTLE: Duration = Duration::from_millis(300);
/// Events taken from the ring buffer in one go, so a flood cannot starve reloads and
/// signals (the ring holds about 3,000).
const EVENT_BATCH: usize = 512;

pub fn run(options: AgentOptions) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_async(options))
}

/// Parses the policy (`name` in diagnostics) with its prefixes drop-in (text and name)
/// laid over it, logging the warnings; errors are returned whole. Returns the layered
/// policy and the policy text's SHA-256.
fn load_policy(
    text: &str,
    name: &str,
    drop_in: Option<(&str, &str)>,
) -> Result<(drop_in::Layered, String)> {
    let layered = drop_in::parse(text, name, drop_in)?;
    for warning in &layered.warnings {
        warn!("{}", one_line(&warning.to_string()));
    }
    Ok((layered, policy::sha256_hex(text.as_bytes())))
}

/// How the agent follows a URL, once started.
struct Following {
    fetcher: Arc<fetch_source::Fetcher>,
    state: fetch::FetchState,
    /// Fetched at start: to cache and count once it is in force.
    fetched: Option<(Option<String>, String)>,
    /// Started from the cache: fetch at once, not after a poll.
    from_cache: bool,
}

/// The policy text to start with: the file's; or for a URL the cached one (the server
/// is asked right after), else a fetch now. Without either nothing is attached: the
/// agent never starts unfiltered or on a policy it could not verify.
fn initial_policy(options: &AgentOptions) -> Result<(String, Option<Following>)> {
    let url = match &options.source {
        PolicySource::File { path, .. } => {
            let text = policy::read(path)
                .with_context(|| format!("policy {} rejected; nothing attached", path.display()))?;
            return Ok((text, None));
        }
        PolicySource::Url(url) => url,
    };
    let fetcher = fetch_source::Fetcher::new(url).context("nothing attached")?;
    let cache = options.state_dir.join(defaults::FETCHED_POLICY_FILE);
    let mut state = fetch::FetchState::new(
        url.url.clone(),
        url.key.clone(),
        fetcher.key().id(),
        url.poll,
        cache.clone(),
    );
    let cached = match fetch::usable_cache(&cache, &url.url, fetcher.key()) {
        Ok(cached) => cached,
        Err(why) => {
            warn!("the cached policy is not used: {why}");
            None
        }
    };
    if let Some(cached) = cached {
        info!(
            "enforcing the cached policy of {} (fetched {}, sha256 {}, signature verified with key {}) until the server answers",
            url.url,
            cached.fetched_at,
            &cached.sha256[..16],
            fetcher.key().id()
        );
        state.etag = cached.etag;
        let following = Following {
            fetcher: Arc::new(fetcher),
            state,
            fetched: None,
            from_cache: true,
        };
        return Ok((cached.policy, Some(following)));
    }
    match fetcher.fetch(None) {
        Ok(fetch_source::Fetched::Signed {
            text,
            signature,
            etag,
        }) => {
            info!(
                "fetched the policy from {} (etag {})",
                url.url,
                etag.as_deref().unwrap_or("none")
            );
            let following = Following {
                fetcher: Arc::new(fetcher),
                state,
                fetched: Some((etag, signature)),
                from_cache: false,
            };
            Ok((text, Some(following)))
        }
        Ok(fetch_source::Fetched::NotModified) => {
            bail!(
                "{}: 304 Not Modified to a request without If-None-Match; nothing attached",
                url.url
            )
        }
        Err(refused) => bail!(
            "no policy to enforce: no usable cached policy in {} and the fetch was refused ({}): {}; nothing attached (the agent retries when restarted, e.g. by systemd's Restart=on-failure)",
            cache.display(),
            refused.outcome.name(),
            refused.reason
        ),
    }
}

/// Journald and log shippers want one event per line.
pub(crate) fn one_line(text: &str) -> String {
    text.lines().map(str::trim).collect::<Vec<_>>().join(" | ")
}

fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|_| anyhow!("no such interface: {name}"))
}

/// Every interface of the policy must exist before anything is changed.
fn check_interfaces(policy: &Policy) -> Result<()> {
    let missing: Vec<&str> = policy
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .filter(|name| ifindex(name).is_err())
        .collect();
    if !missing.is_empty() {
        bail!("no such interface: {}", missing.join(", "));
    }
    Ok(())
}

async fn run_async(options: AgentOptions) -> Result<()> {
    let started = Instant::now();
    let loader = dataplane::Loader::new();
    let (text, following) = initial_policy(&options)?;
    let label = options.source.label();
    let drop_in_file = match &options.source {
        PolicySource::File { path, .. } => drop_in::read_beside(path)
            .with_context(|| format!("policy {label} rejected; nothing attached"))?,
        PolicySource::Url(_) => None,
    };
    let drop_in_name = drop_in_file
        .as_ref()
        .map(|(_, path)| path.display().to_string());
    let drop_in_text = drop_in_file.map(|(text, _)| text);
    let (layered, sha256) = load_policy(
        &text,
        &label,
        drop_in_text.as_deref().zip(drop_in_name.as_deref()),
    )
    .with_context(|| format!("policy {label} rejected; nothing attached"))?;
    let policy = layered.policy;
    check_interfaces(&policy)?;
    // Before anything is created or attached: a bad file changes nothing.
    let web_config = match &options.web_config {
        Some(path) => crate::web_config::WebConfig::load(path)?,
        None => crate::web_config::WebConfig::default(),
    };
    std::fs::create_dir_all(&options.state_dir).with_context(|| {
        format!(
            "creating the state directory {}",
            options.state_dir.display()
        )
    })?;
    let exemptions = ExemptionStore::load(&options.state_file)?;
    let subscribers = Subscribers::load(&options.state_dir)?;
    let history = PolicyHistory::load(&options.state_dir.join(history::HISTORY_DIR))?;
    let pending = PendingStore::load(&options.state_dir.join(history::PENDING_FILE))?;
    let pins = PinDir::open_locked(&options.pin_path)?;
    let (listener, _) = control::bind(&options.socket, options.socket_group.as_deref())?;
    let writers_gid = match &options.writers_group {
        Some(name) => Some(control::group_id(name)?),
        None => None,
    };
    let metrics_listener = match options.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?,
        ),
        None => None,
    };
    let image = policy.compile();
    let mut dataplane = Dataplane::load_pinned(loader, &pins, Capacity::for_image(&image))?;
    let applied = dataplane.read_image()?;
    // Group ids the kernel holds are kept; they are those of a fresh compile unless the
    // groups changed since the maps were written.
    let kernel_ids = state::group_ids(&applied);
    let image = if kernel_ids.is_empty() || kernel_ids == state::group_ids(&image) {
        image
    } else {
        policy.compile_with_ids(&kernel_ids)
    };
    let now = SystemTime::now();
    // The generation in force continues the history; a text that differs from its last
    // one (edited while the agent was stopped, or never seen) is a new generation.
    let generation = history.current().map_or(0, |g| g.generation);
    let drop_in_sha256 = drop_in_text
        .as_ref()
        .map(|d| policy::sha256_hex(d.as_bytes()));
    let new_generation = history
        .current()
        .is_none_or(|g| g.sha256 != sha256 || g.prefixes_sha256 != drop_in_sha256);
    let mut agent = Agent {
        pins,
        dataplane,
        state: State {
            source: options.source.clone(),
            fetch: None,
            // Set by `apply_image` below, like the policy.
            policy_image: MapImage::new(applied.config),
            policy: policy.clone(),
            policy_text: text,
            drop_in: layered.drop_in,
            drop_in_text,
            policy_sha256: sha256.clone(),
            policy_loaded_at: now,
            exemptions,
            applied,
            generation,
            history,
            pending,
            automatic_rollbacks: 0,
            last_reload: ReloadResult {
                ok: true,
                at: now,
                message: "started".into(),
            },
            started_at: now,
            over_threshold: Default::default(),
            subscribers,
            sessions_touched: false,
            radius: Default::default(),
            attachments: Default::default(),
        },
    };
    agent.apply_image(
        policy,
        image,
        sha256,
        generation + u64::from(new_generation),
    )?;
    if new_generation {
        agent.record(Origin::new(How::Start, None));
    }
    agent.state.last_reload.message = format!("generation {} in force", agent.state.generation);
    let mut fetch_task = None;
    if let Some(Following {
        fetcher,
        state,
        fetched,
        from_cache,
    }) = following
    {
        let (now_tx, now_rx) = mpsc::channel(4);
        let poll = state.poll;
        agent.state.fetch = Some(fetch::FetchState {
            now: Some(now_tx),
            ..state
        });
        if let Some((etag, signature)) = fetched {
            agent.fetched_at_start(etag, signature);
        }
        if agent.state.pending.get().is_some() {
            warn!(
                "the policy now comes from {label}: the pending rollback of an earlier `apply` is dropped"
            );
            agent.state.pending.set(None)?;
        }
        fetch_task = Some((fetcher, now_rx, from_cache, poll));
    }
    if let Some((pending, left)) = agent.pending_deadline() {
        warn!(
            "generation {} is not confirmed: generation {} is applied again in {} unless `filter-agent confirm` comes first",
            pending.generation,
            pending.rollback_to,
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        );
    }
    // Signal handlers and the file watcher are in place before "enforcing" is announced:
    // a SIGHUP sent (or a file saved) right after the announcement is a reload, not the
    // default action (death) or a missed change. Both queue until the loop below runs.
    let (file_tx, mut file_rx) = mpsc::unbounded_channel();
    // With --no-watch (or a URL) the sender is dropped: the file is read on SIGHUP and
    // `reload` only.
    let _watcher = match &options.source {
        PolicySource::File { path, watch: true } => Some(watch(path, file_tx)?),
        PolicySource::File { path, watch: false } => {
            info!(
                "not watching {}: it is read on SIGHUP and `filter-agent reload`",
                path.display()
            );
            None
        }
        PolicySource::Url(url) => {
            info!(
                "following {} every {} (key {}); SIGHUP and `filter-agent reload` fetch it now",
                url.url,
                humantime::format_duration(url.poll),
                url.key.display()
            );
            None
        }
    };
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let attached: Vec<String> = dataplane::attached(&agent.pins)?
        .iter()
        .map(|a| {
            format!(
                "{}({},{},prog {})",
                a.interface, a.mode, a.attach, a.program_id
            )
        })
        .collect();
    info!(
        "enforcing after {} ms on [{}], pin path {}, {} exemptions, {} subscriber exemptions, {} sessions, control socket {}",
        started.elapsed().as_millis(),
        attached.join(", "),
        options.pin_path.display(),
        agent.state.exemptions.len(),
        agent.state.subscribers.exemptions.len(),
        agent.state.subscribers.sessions.len(),
        options.socket.display()
    );
    // systemd (Type=notify) starts what is ordered after us only now: the filter enforces.
    let ready = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("enforcing generation {}", agent.state.generation)),
    ]);
    if let Err(err) = ready {
        warn!("cannot tell systemd that the filter is enforcing (NOTIFY_SOCKET): {err}");
    }
    if let Err(err) = agent.seed_over_threshold() {
        warn!("cannot read the offender records: {err:#}");
    }
    let mut events = match agent.dataplane.take_events().map(|ring| {
        // SAFETY: the ring buffer owns its map's fd: it stays open, and is the one
        // `as_raw_fd` returns, for as long as the AsyncFd holds the ring.
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    }) {
        Some(Ok(ring)) => Some(ring),
        Some(Err(err)) => {
            error!("cannot watch the events ring buffer; no drop events will be logged: {err}");
            None
        }
        None => {
            error!("the events ring buffer is missing; no drop events will be logged");
            None
        }
    };

    let agent = Arc::new(Mutex::new(agent));
    if let Some((fetcher, now_rx, from_cache, poll)) = fetch_task {
        tokio::spawn(fetch::follow(
            agent.clone(),
            fetcher,
            poll,
            now_rx,
            from_cache,
        ));
    }
    tokio::spawn(control::serve(
        listener,
        control::Permissions { writers_gid },
        Arc::new(handler::AgentHandler {
            agent: agent.clone(),
        }),
    ));
    if let Some(listener) = metrics_listener {
        info!(
            "metrics on {}://{}/metrics{}",
            if web_config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            listener.local_addr()?,
            if web_config.requires_auth() {
                " (basic auth)"
            } else {
                ""
            }
        );
        let source = agent.clone();
        let snapshot: Arc<metrics::SnapshotFn> = Arc::new(move || {
            let mut agent = source
                .lock()
                .map_err(|_| anyhow::anyhow!("agent state poisoned"))?;
            handler::snapshot(&mut agent)
        });
        tokio::spawn(metrics::serve(listener, snapshot, Arc::new(web_config)));
    }

    // Exemptions expire on time: checked every second (and any events a missed wakeup
    // left in the ring buffer are taken then).
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    let lock = || agent.lock().expect("agent state poisoned");
    let mut radius = RadiusListener::default();
    radius.follow(&agent);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let now = lock().state.fetch.as_ref().and_then(|f| f.now.clone());
                match now {
                    // The fetch task logs what it came to.
                    Some(now) => {
                        info!("SIGHUP: fetching the policy now");
                        let _ = now.try_send(None);
                    }
                    None => {
                        let _ = lock().reload(Origin::new(How::Sighup, None));
                    }
                }
            }
            Some(changed) = file_rx.recv() => {
                // Let the burst of events from one save settle, then reload once.
                tokio::time::sleep(SETTLE).await;
                let mut policy_file = changed == Changed::Policy;
                while let Ok(changed) = file_rx.try_recv() {
                    policy_file |= changed == Changed::Policy;
                }
                let mut agent = lock();
                // `prefixes add` and `remove` write the drop-in themselves: no reload then.
                if policy_file || agent.state.drop_in_edited() {
                    let _ = agent.reload(Origin::new(How::FileChange, None));
                }
            }
            batch = next_events(&mut events) => lock().handle_events(&batch),
            _ = expiry.tick() => {
                let mut agent = lock();
                agent.roll_back_if_unconfirmed();
                agent.expire_exemptions();
                agent.expire_subscribers();
                if let Some(ring) = events.as_mut() {
                    agent.handle_events(&drain(ring.get_mut()));
                }
                agent.offenders_over_threshold();
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
        // A reload may have moved the RADIUS listener.
        radius.follow(&agent);
    }
    let _ = std::fs::remove_file(&options.socket);
    info!("stopping; the filter stays attached and enforcing (`filter-agent detach` removes it)");
    Ok(())
}

/// The task serving RADIUS accounting, where the policy in force wants one.
#[derive(Default)]
struct RadiusListener {
    task: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
}

impl RadiusListener {
    /// Serves a socket the last (re)load bound, or stops when the policy has no listener.
    fn follow(&mut self, agent: &Arc<Mutex<Agent>>) {
        let mut locked = agent.lock().expect("agent state poisoned");
        let radius = &mut locked.state.radius;
        if let Some(socket) = radius.bound.take() {
            let addr = match socket.local_addr() {
                Ok(addr) => addr,
                Err(err) => {
                    error!("the RADIUS accounting socket has no address: {err}");
                    return;
                }
            };
            let socket = match tokio::net::UdpSocket::from_std(socket) {
                Ok(socket) => socket,
                Err(err) => {
                    error!("cannot serve RADIUS accounting on {addr}: {err}");
                    return;
                }
            };
            if let Some((old, task)) = self.task.take() {
                task.abort();
                info!("radius accounting no longer on {old}");
            }
            let apply: Arc<accounting::Apply> = {
                let agent = agent.clone();
                Arc::new(move |change, now| {
                    agent
                        .lock()
                        .map_err(|_| anyhow!("agent state poisoned"))?
                        .apply_accounting(change, now)
                })
            };
            let task = tokio::spawn(accounting::serve(
                socket,
                radius.clients.clone(),
                radius.counters.clone(),
                apply,
            ));
            info!("radius accounting on udp {addr}");
            self.task = Some((addr, task));
        } else if radius.listen.is_none()
            && let Some((old, task)) = self.task.take()
        {
            task.abort();
            info!("radius accounting no longer on {old} (not in the policy)");
        }
    }
}

/// The RADIUS clients of `radius` with their secrets read from their files; a trailing
/// newline is not part of a secret.
pub(crate) fn radius_clients(radius: &RadiusAccounting) -> Result<Clients> {
    let mut clients = Vec::new();
    for client in &radius.clients {
        let path = &client.secret_file;
        let mut secret = std::fs::read(path).with_context(|| {
            format!(
                "reading the RADIUS secret of client {} from {}",
                client.address,
                path.display()
            )
        })?;
        for end in [b"\n", b"\r"] {
            if secret.last() == Some(&end[0]) {
                secret.pop();
            }
        }
        if secret.is_empty() {
            bail!(
                "the RADIUS secret of client {} in {} is empty",
                client.address,
                path.display()
            );
        }
        if std::fs::metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o004 != 0
        }) {
            warn!(
                "{} (the RADIUS secret of client {}) is readable by everyone; chmod o-r it",
                path.display(),
                client.address
            );
        }
        clients.push(Client {
            address: client.address,
            secret,
        });
    }
    Ok(Clients(clients))
}

/// Waits until the ring buffer has events and takes up to [`EVENT_BATCH`] of them; never
/// returns when there is no ring buffer.
async fn next_events(ring: &mut Option<AsyncFd<RingBuf<MapData>>>) -> Vec<Event> {
    let Some(fd) = ring.as_mut() else {
        return std::future::pending().await;
    };
    match fd.readable_mut().await {
        Ok(mut guard) => {
            let batch = drain(guard.get_inner_mut());
            // A full batch may have left more behind: stay ready so the loop comes back.
            if batch.len() < EVENT_BATCH {
                guard.clear_ready();
            }
            batch
        }
        Err(err) => {
            error!("the events ring buffer failed; no more drop events will be logged: {err}");
            *ring = None;
            Vec::new()
        }
    }
}

/// Takes up to [`EVENT_BATCH`] events from the ring buffer without waiting.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut batch = Vec::new();
    while batch.len() < EVENT_BATCH {
        let Some(item) = ring.next() else { break };
        match events::parse(&item) {
            Some(event) => batch.push(event),
            None => warn!("a {}-byte event is too short; ignored", item.len()),
        }
    }
    batch
}

/// Which watched file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Changed {
    Policy,
    DropIn,
}

/// Watches the policy's directory, so a file replaced by rename (as editors and config
/// management do) is seen as well as one written in place, and the prefixes drop-in
/// beside it. A policy that is a symlink
/// into its own directory is followed too: a Kubernetes ConfigMap volume holds
/// `policy.yaml -> ..data/policy.yaml` and the kubelet updates it by renaming a new
/// `..data` symlink over the old one, so events on the first component of the link's
/// target (`..data`), read again at each event, count as changes of the policy.
fn watch(policy: &Path, tx: mpsc::UnboundedSender<Changed>) -> Result<notify::RecommendedWatcher> {
    let policy = std::path::absolute(policy)?;
    let drop_in = drop_in::path_beside(&policy)
        .file_name()
        .context("the policy path has no file name")?
        .to_owned();
    let dir = policy
        .parent()
        .context("the policy path has no directory")?
        .to_path_buf();
    let name = policy
        .file_name()
        .context("the policy path has no file name")?
        .to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let link = linked_name(&policy);
        for path in &event.paths {
            let Some(file) = path.file_name() else {
                continue;
            };
            if file == name.as_os_str() || link.as_deref() == Some(file) {
                let _ = tx.send(Changed::Policy);
            } else if file == drop_in.as_os_str() {
                let _ = tx.send(Changed::DropIn);
            }
        }
    })?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(watcher)
}

/// When `policy` is a symlink with a relative target, the name in the policy's own
/// directory the target goes through first (`..data` for `..data/policy.yaml`).
fn linked_name(policy: &Path) -> Option<std::ffi::OsString> {
    let target = std::fs::read_link(policy).ok()?;
    match target.components().next()? {
        std::path::Component::Normal(first) => Some(first.to_owned()),
        _ => None,
    }
}

/// `filter-agent detach`: removes the filter from every interface and deletes the pins.
pub fn detach(pin_path: &Path) -> Result<()> {
    let pins = PinDir::open_locked(pin_path)
        .context("refusing to detach under a running agent; stop it first")?;
    let interfaces = pins.pinned_links()?;
    // Our dispatcher components first: removing the maps' pins does not remove them.
    for interface in dataplane::detach_components(&pins, None)? {
        println!(
            "removed our component from the dispatcher on {interface}; the other programs stay"
        );
    }
    pins.remove_all()?;
    for (interface, mode) in interfaces {
        println!("detached from {interface} ({mode})");
    }
    println!("removed the pins under {}", pin_path.display());
    Ok(())
}
