//! `filter-agent run`: load, adopt, sync, attach, then keep the kernel in step with the
//! policy file (SIGHUP, or the file changing) until told to stop. Stopping leaves the
//! filter attached and enforcing: the kernel holds all state (pinned maps and links), so a
//! restarted agent picks up where this one left off.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use log::{error, info, warn};
use notify::Watcher;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    dataplane::{Capacity, Dataplane, PinDir},
    image::MapImage,
    policy::{self, Policy},
};

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/filter-agent";

/// Debounce for file events: editors write, rename and chmod in a burst.
const SETTLE: Duration = Duration::from_millis(300);

pub struct RunOptions {
    pub policy: PathBuf,
    pub pin_path: PathBuf,
}

pub fn run(options: RunOptions) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_async(options))
}

/// Loads and validates the policy, logging its warnings; errors are returned whole.
fn load_policy(path: &Path) -> Result<Policy> {
    match policy::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                warn!("{}", one_line(&warning.to_string()));
            }
            Ok(loaded.policy)
        }
        Err(errors) => bail!("{errors}"),
    }
}

/// Journald and log shippers want one event per line.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).collect::<Vec<_>>().join(" | ")
}

/// Every interface of the policy must exist before anything is changed.
fn check_interfaces(policy: &Policy) -> Result<()> {
    let missing: Vec<&str> = policy
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .filter(|name| {
            let c_name = std::ffi::CString::new(*name).unwrap_or_default();
            // SAFETY: valid NUL-terminated string.
            unsafe { libc::if_nametoindex(c_name.as_ptr()) == 0 }
        })
        .collect();
    if !missing.is_empty() {
        bail!("no such interface: {}", missing.join(", "));
    }
    Ok(())
}

struct Agent {
    policy_path: PathBuf,
    pins: PinDir,
    dataplane: Dataplane,
    /// What the maps hold: read from the kernel at start, then the image last applied
    /// (this agent is the maps' only writer), so a reload diffs without reading them back.
    applied: MapImage,
    generation: u64,
}

impl Agent {
    /// Makes the kernel match `policy`: maps first (hole-free), then attachments.
    fn apply(&mut self, policy: &Policy) -> Result<()> {
        let started = Instant::now();
        check_interfaces(policy)?;
        let ids = self
            .applied
            .groups
            .iter()
            .map(|(&id, g)| (g.name.clone(), id))
            .collect();
        let image = policy.compile_with_ids(&ids);
        let report = self.dataplane.sync_from(&self.applied, &image);
        if report.is_err() {
            // A failed sync may have applied part of the plan: learn what the maps hold.
            self.applied = self.dataplane.read_image()?;
        }
        let report = report?;
        self.applied = image;
        for interface in &policy.interfaces {
            self.dataplane
                .attach(&self.pins, &interface.name, interface.xdp_mode)?;
        }
        for (pinned, _) in self.pins.pinned_links()? {
            if !policy.interfaces.iter().any(|i| i.name == pinned) {
                self.pins.detach_interface(&pinned)?;
            }
        }
        self.generation += 1;
        info!(
            "policy={} generation={} groups={} prefixes={} relays={} {report} applied_ms={}",
            self.policy_path.display(),
            self.generation,
            policy.groups.len(),
            policy.prefix_count(),
            policy.relays.len(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    fn reload(&mut self, why: &str) {
        info!("reload requested ({why})");
        let started = Instant::now();
        let result = load_policy(&self.policy_path).and_then(|policy| self.apply(&policy));
        if result.is_ok() {
            info!(
                "reload done in {} ms (parse, validate, sync)",
                started.elapsed().as_millis()
            );
        }
        if let Err(err) = result {
            for line in format!("{err:#}").lines() {
                error!("reload refused: {line}");
            }
            error!("reload refused: the running policy stays in force unchanged");
        }
    }
}

async fn run_async(options: RunOptions) -> Result<()> {
    let started = Instant::now();
    let policy = load_policy(&options.policy).with_context(|| {
        format!(
            "policy {} rejected; nothing attached",
            options.policy.display()
        )
    })?;
    check_interfaces(&policy)?;
    let pins = PinDir::open_locked(&options.pin_path)?;
    let capacity = Capacity::for_image(&policy.compile());
    let mut dataplane = Dataplane::load_pinned(&pins, capacity)?;
    let applied = dataplane.read_image()?;
    let mut agent = Agent {
        policy_path: options.policy.clone(),
        pins,
        dataplane,
        applied,
        generation: 0,
    };
    agent.apply(&policy)?;
    let attached: Vec<String> = agent
        .pins
        .attached()?
        .iter()
        .map(|a| format!("{}({},prog {})", a.interface, a.mode, a.program_id))
        .collect();
    info!(
        "enforcing after {} ms on [{}], pin path {}",
        started.elapsed().as_millis(),
        attached.join(", "),
        options.pin_path.display()
    );

    let (file_tx, mut file_rx) = mpsc::unbounded_channel();
    let _watcher = watch(&options.policy, file_tx)?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => agent.reload("SIGHUP"),
            Some(()) = file_rx.recv() => {
                // Let the burst of events from one save settle, then reload once.
                tokio::time::sleep(SETTLE).await;
                while file_rx.try_recv().is_ok() {}
                agent.reload("policy file changed");
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("stopping; the filter stays attached and enforcing (`filter-agent detach` removes it)");
    Ok(())
}

/// Watches the policy's directory, so a file replaced by rename (as editors and config
/// management do) is seen as well as one written in place.
fn watch(policy: &Path, tx: mpsc::UnboundedSender<()>) -> Result<notify::RecommendedWatcher> {
    let policy = std::path::absolute(policy)?;
    let dir = policy
        .parent()
        .context("the policy path has no directory")?
        .to_path_buf();
    let name = policy.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(watcher)
}

/// `filter-agent detach`: removes the filter from every interface and deletes the pins.
pub fn detach(pin_path: &Path) -> Result<()> {
    let pins = PinDir::open_locked(pin_path)
        .context("refusing to detach under a running agent; stop it first")?;
    let interfaces = pins.pinned_links()?;
    pins.remove_all()?;
    for (interface, mode) in interfaces {
        println!("detached from {interface} ({mode})");
    }
    println!("removed the pins under {}", pin_path.display());
    Ok(())
}

/// Daemon logging: one event per line; under systemd (JOURNAL_STREAM set) with syslog
/// level prefixes and no timestamp, since journald adds its own.
pub fn init_logging() {
    use std::io::Write;
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if journal {
        builder.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}", record.args())
        });
    } else {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        });
    }
    builder.init();
}
