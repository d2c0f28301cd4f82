//! Reading the filter while no agent runs: the pinned maps keep enforcing after the agent
//! stops, so `status`, `stats`, `offenders` and `exemptions list` answer from them and
//! from the state directory, through the same handler (and so the same replies) as a
//! running agent. Nothing is written, created or attached.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context, Result, bail};
use filter_common::maps::FILTER_CONFIG;

use super::{
    handler::AgentHandler,
    history::{self, PendingStore, PolicyHistory},
    state::{self, Agent, ReloadResult, State},
};
use crate::{
    control::{Handler, Peer, Request, protocol::Response},
    dataplane::{self, Dataplane, PinDir},
    drop_in,
    exemptions::ExemptionStore,
    source::PolicySource,
    subscribers::Subscribers,
};

/// Where a stopped agent left its filter and its state.
pub struct PinnedFilter {
    pub pin_path: PathBuf,
    pub state_dir: PathBuf,
}

/// What the pins say about enforcement, for the one line the CLI prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcing {
    /// The filter's program is attached to at least one interface.
    Yes,
    /// Maps are pinned, but no interface runs the program.
    Detached,
}

impl Enforcing {
    pub fn line(self) -> &'static str {
        match self {
            Enforcing::Yes => "agent not running; reading the pinned filter, which is enforcing",
            Enforcing::Detached => {
                "agent not running; reading the pinned filter, which is attached to no \
                 interface: nothing is filtered"
            }
        }
    }
}

impl PinnedFilter {
    /// Whether an agent left maps pinned here.
    pub fn exists(&self) -> bool {
        self.pin_path.join("maps").join(FILTER_CONFIG.name).exists()
    }

    /// Answers one read request from the pins; `request` must be a read.
    pub fn answer(&self, request: Request) -> Result<(Response, Enforcing)> {
        if !matches!(
            request,
            Request::Status | Request::Stats | Request::Offenders { .. } | Request::ExemptionsList
        ) {
            bail!("only status, stats, offenders and exemptions list work without the agent");
        }
        if !nix::unistd::geteuid().is_root() {
            bail!("reading the pinned filter without the agent needs root");
        }
        let mut agent = self.agent()?;
        let enforcing = if dataplane::attached(&agent.pins)?.is_empty() {
            Enforcing::Detached
        } else {
            Enforcing::Yes
        };
        agent.seed_over_threshold()?;
        let handler = AgentHandler {
            agent: Arc::new(Mutex::new(agent)),
        };
        let root = Peer {
            pid: std::process::id() as i32,
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            user: "root".into(),
        };
        let mut response = handler
            .handle(&root, request)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Response::Status(status) = &mut response {
            // The handler describes the process answering; here that is no agent.
            status.agent.pid = None;
        }
        Ok((response, enforcing))
    }

    /// The agent's view, rebuilt read-only: the maps as the kernel holds them, and the
    /// policy in force as the history's last generation (what the stopped agent applied).
    fn agent(&self) -> Result<Agent> {
        let pins = PinDir::open(&self.pin_path)?;
        let mut dataplane = Dataplane::open_pinned(&pins)?;
        let applied = dataplane.read_image()?;
        let history = PolicyHistory::load(&self.state_dir.join(history::HISTORY_DIR))?;
        let Some(current) = history.current().cloned() else {
            bail!(
                "{} keeps no policy history, so the policy in force is unknown; \
                 pass the agent's --state-dir",
                self.state_dir.display()
            );
        };
        let text = history.text(current.generation)?;
        let drop_in_text = history.prefixes_text(current.generation)?;
        let name = format!("generation {}", current.generation);
        let drop_in_name = format!("the prefixes of {name}");
        let layered = drop_in::parse(
            &text,
            &name,
            drop_in_text.as_deref().map(|d| (d, drop_in_name.as_str())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading {name} from the history"))?;
        let policy = layered.policy;
        // The ids the kernel holds, as a restarted agent would keep them.
        let policy_image = policy.compile_with_ids(&state::group_ids(&applied));
        let loaded_at =
            humantime::parse_rfc3339(&current.applied_at).unwrap_or(SystemTime::UNIX_EPOCH);
        let policy_path = history::text_path(
            &self.state_dir.join(history::HISTORY_DIR),
            current.generation,
        );
        Ok(Agent {
            pins,
            dataplane,
            state: State {
                // What status names as the policy's file: the history's copy of it.
                source: PolicySource::File {
                    path: policy_path,
                    watch: false,
                },
                fetch: None,
                policy,
                policy_text: text,
                drop_in: layered.drop_in,
                drop_in_text,
                policy_sha256: current.sha256.clone(),
                policy_loaded_at: loaded_at,
                policy_image,
                exemptions: ExemptionStore::load(
                    &self.state_dir.join(crate::defaults::EXEMPTIONS_FILE),
                )?,
                applied,
                generation: current.generation,
                pending: PendingStore::load(&self.state_dir.join(history::PENDING_FILE))?,
                history,
                automatic_rollbacks: 0,
                last_reload: ReloadResult {
                    ok: true,
                    at: loaded_at,
                    message: format!("{name} in force; the agent is not running"),
                },
                started_at: loaded_at,
                over_threshold: Default::default(),
                subscribers: Subscribers::load(&self.state_dir)?,
                sessions_touched: false,
                radius: Default::default(),
                attachments: Default::default(),
            },
        })
    }
}
