//! What crosses the control socket. One request per connection over a Unix stream
//! socket: the client writes one JSON object and a newline, the server writes one JSON
//! reply and closes.
//!
//! ```text
//! -> {"version":1,"command":"exemptions-add","prefix":"192.0.2.7/32","reason":"ticket 42","expires":"2h","until":null}
//! <- {"version":1,"ok":true,"result":{...}}
//! <- {"version":1,"ok":false,"error":"permission denied: ...","kind":"permission-denied"}
//! ```

use std::{fmt, net::IpAddr, path::PathBuf, time::SystemTime};

use filter_common::{Action, Config, Family, Reason, Smtp, Verdict};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::{dataplane::AttachedInterface, metrics::Actions, policy::Mode, subscribers::Feed};

pub const PROTOCOL_VERSION: u32 = 1;
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// One request per connection: the client writes one JSON object and a newline, the server
/// one reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Stats,
    ExemptionsList,
    ExemptionsAdd {
        prefix: String,
        reason: String,
        expires: Option<String>,
        until: Option<String>,
    },
    ExemptionsRemove {
        prefix: String,
    },
    Explain {
        src: IpAddr,
        dst: IpAddr,
        dport: u16,
    },
    /// The sources with the most blocked attempts; `top` of them (default
    /// [`DEFAULT_TOP_OFFENDERS`]).
    Offenders {
        #[serde(default)]
        top: Option<usize>,
    },
    /// A subscriber's session has these addresses now (a hook: pppd's ip-up).
    SessionsUp {
        subscriber: String,
        addresses: Vec<String>,
        #[serde(default)]
        session_id: Option<String>,
    },
    /// Sessions end (a hook: pppd's ip-down): one of the two is given.
    SessionsDown {
        #[serde(default)]
        subscriber: Option<String>,
        #[serde(default)]
        session_id: Option<String>,
    },
    SessionsList,
    /// An exemption by subscriber name, following the subscriber's sessions.
    SubscriberExemptionsAdd {
        subscriber: String,
        reason: String,
        expires: Option<String>,
        until: Option<String>,
    },
    SubscriberExemptionsRemove {
        subscriber: String,
    },
    /// Re-read the policy file and apply it; the reply says whether it was.
    Reload,
    /// Apply the uploaded policy (and write it to the policy file); with
    /// `confirm_within`, roll back unless `confirm` comes within that time.
    Apply {
        policy: PolicyUpload,
        #[serde(default)]
        confirm_within: Option<String>,
    },
    /// Keep the change a pending rollback would undo.
    Confirm,
    /// Apply an earlier generation again (default: the one before the one in force).
    Rollback {
        #[serde(default)]
        to: Option<u64>,
        #[serde(default)]
        confirm_within: Option<String>,
    },
    /// The generations kept, oldest first.
    History,
    /// What applying the uploaded policy would change, and the traffic it would move:
    /// the sources seen within `window_seconds` (default [`PLAN_WINDOW_SECONDS`]).
    Plan {
        policy: PolicyUpload,
        #[serde(default)]
        window_seconds: Option<u64>,
    },
    /// The changes between two kept generations, as `plan` shows them.
    Diff {
        from: u64,
        to: u64,
        #[serde(default)]
        window_seconds: Option<u64>,
    },
    /// Add prefixes to a group of the policy (kept in the prefixes drop-in beside the
    /// policy file), as an IPAM does.
    PrefixesAdd {
        group: String,
        prefixes: Vec<String>,
    },
    /// Take prefixes out of the policy's groups.
    PrefixesRemove {
        prefixes: Vec<String>,
    },
}

/// A policy sent with a request: `bytes` bytes of its text follow the request's newline
/// (policies can be far larger than a request line may be). The server reads them into
/// `text` once the request is known and allowed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyUpload {
    /// What diagnostics call it: the file the CLI read.
    pub name: String,
    pub bytes: usize,
    #[serde(skip)]
    pub text: String,
}

/// Logged with every request: the name and size, never the whole text.
impl fmt::Debug for PolicyUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.name, self.bytes)
    }
}

impl PolicyUpload {
    pub fn new(name: String, text: String) -> PolicyUpload {
        PolicyUpload {
            name,
            bytes: text.len(),
            text,
        }
    }
}

/// How many offenders `filter-agent offenders` lists unless told otherwise.
pub const DEFAULT_TOP_OFFENDERS: usize = 20;

/// The wire names of the commands, to tell an unknown command from a bad known one.
/// A test holds it to the enum.
const COMMANDS: [&str; 21] = [
    "status",
    "stats",
    "exemptions-list",
    "exemptions-add",
    "exemptions-remove",
    "explain",
    "offenders",
    "sessions-up",
    "sessions-down",
    "sessions-list",
    "subscriber-exemptions-add",
    "subscriber-exemptions-remove",
    "reload",
    "apply",
    "confirm",
    "rollback",
    "history",
    "plan",
    "diff",
    "prefixes-add",
    "prefixes-remove",
];

/// How far back `plan` looks for sources unless told otherwise.
pub const PLAN_WINDOW_SECONDS: u64 = 3600;

/// Largest policy a request may carry: a million prefixes with room to spare.
pub const MAX_POLICY_BYTES: usize = 64 * 1024 * 1024;

impl Request {
    /// Whether the request changes what the filter does (and so needs a writer).
    pub fn is_mutation(&self) -> bool {
        self.change_name().is_some()
    }

    /// What a mutation does, as a refusal names it; `None` for reads.
    pub fn change_name(&self) -> Option<&'static str> {
        match self {
            Request::ExemptionsAdd { .. }
            | Request::ExemptionsRemove { .. }
            | Request::SubscriberExemptionsAdd { .. }
            | Request::SubscriberExemptionsRemove { .. } => Some("adding or removing exemptions"),
            Request::SessionsUp { .. } | Request::SessionsDown { .. } => {
                Some("changing subscriber sessions")
            }
            Request::Reload => Some("reloading the policy"),
            Request::Apply { .. } => Some("applying a policy"),
            Request::Confirm => Some("confirming a change"),
            Request::Rollback { .. } => Some("rolling back"),
            Request::PrefixesAdd { .. } | Request::PrefixesRemove { .. } => {
                Some("changing the policy's prefixes")
            }
            _ => None,
        }
    }

    pub fn has_upload(&self) -> bool {
        matches!(self, Request::Apply { .. } | Request::Plan { .. })
    }

    /// The policy this request carries after its line, if any.
    pub fn upload_mut(&mut self) -> Option<&mut PolicyUpload> {
        match self {
            Request::Apply { policy, .. } | Request::Plan { policy, .. } => Some(policy),
            _ => None,
        }
    }

    /// Changes wait for the maps to be written (a large policy takes seconds).
    pub fn reply_timeout(&self) -> std::time::Duration {
        match self {
            Request::Reload
            | Request::Apply { .. }
            | Request::Rollback { .. }
            | Request::Plan { .. }
            | Request::Diff { .. } => std::time::Duration::from_secs(120),
            _ => std::time::Duration::from_secs(10),
        }
    }
}

/// The request as sent: the command's fields next to `version`.
#[derive(Serialize)]
struct Envelope<'a> {
    version: u32,
    #[serde(flatten)]
    request: &'a Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    PermissionDenied,
    BadRequest,
    Failed,
}

/// `{"version":1,"ok":true,"result":...}` or
/// `{"version":1,"ok":false,"error":"...","kind":"bad-request"}`. The agent sends a
/// [`Response`]; the CLI reads the reply type of the request it sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de>"))]
pub struct Reply<T = Value> {
    pub version: u32,
    pub ok: bool,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "with_sorted_keys"
    )]
    pub result: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

impl<T> Reply<T> {
    pub(super) fn success(result: T) -> Reply<T> {
        Reply {
            version: PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
            kind: None,
        }
    }

    pub(super) fn failure(error: &ControlError) -> Reply<T> {
        Reply {
            version: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(error.to_string()),
            kind: Some(error.kind()),
        }
    }
}

/// Results go out with the keys of every object sorted, as they did when replies were
/// built as JSON maps: clients written against version 1 see the same bytes.
fn with_sorted_keys<T: Serialize, S: serde::Serializer>(
    result: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    sorted(result)
        .map_err(serde::ser::Error::custom)?
        .serialize(serializer)
}

/// `value` as JSON with every object's keys sorted (the form of results on the wire).
pub fn sorted(value: &impl Serialize) -> serde_json::Result<Value> {
    // serde_json's map is ordered by key (its `preserve_order` feature is off).
    serde_json::to_value(value)
}

/// Why a request was not carried out. The message is shown to the user as is, so it says
/// what was wrong; `PermissionDenied` is displayed with a "permission denied: " prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    PermissionDenied(String),
    BadRequest(String),
    Failed(String),
}

impl ControlError {
    fn kind(&self) -> ErrorKind {
        match self {
            ControlError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            ControlError::BadRequest(_) => ErrorKind::BadRequest,
            ControlError::Failed(_) => ErrorKind::Failed,
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::PermissionDenied(message) => write!(f, "permission denied: {message}"),
            ControlError::BadRequest(message) | ControlError::Failed(message) => {
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ControlError {}

/// What the agent answers, one variant per request; on the wire, the variant's value
/// alone (the client knows which request it sent).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Status(Box<Status>),
    Stats(Stats),
    Exemptions(ExemptionList),
    ExemptionChange(ExemptionChange),
    Explain(Explanation),
    Offenders(Offenders),
    Sessions(SessionList),
    SessionChange(SessionChange),
    Applied(Applied),
    Confirmed(Confirmed),
    History(History),
    Plan(Box<Plan>),
    PrefixesChanged(PrefixesChanged),
}

/// How a generation of the policy came to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// The agent started with it.
    Start,
    /// The policy file changed (the agent watches it).
    FileChange,
    Sighup,
    /// `filter-agent reload`.
    Reload,
    /// `filter-agent apply`.
    Apply,
    /// `filter-agent rollback`, or an unconfirmed change undone by the agent.
    Rollback,
    /// Fetched from the policy URL (`run --policy-url`), its signature verified.
    Fetch,
    /// `filter-agent prefixes add`.
    PrefixesAdd,
    /// `filter-agent prefixes remove`.
    PrefixesRemove,
}

impl How {
    pub fn name(self) -> &'static str {
        match self {
            How::Start => "start",
            How::FileChange => "file change",
            How::Sighup => "SIGHUP",
            How::Reload => "reload",
            How::Apply => "apply",
            How::Rollback => "rollback",
            How::Fetch => "fetch",
            How::PrefixesAdd => "prefixes add",
            How::PrefixesRemove => "prefixes remove",
        }
    }
}

/// One applied generation of the policy, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u64,
    /// Of the policy text, which the history keeps byte for byte.
    pub sha256: String,
    pub bytes: u64,
    pub applied_at: String,
    pub how: How,
    /// The peer's user for a request over the socket, `agent` for an automatic rollback;
    /// `None` for a file change or a signal.
    pub who: Option<String>,
    /// For a rollback: the generation whose text it applied again.
    pub restores: Option<u64>,
    pub note: Option<String>,
    /// Of the prefixes drop-in laid over the policy text, also kept byte for byte; `None`:
    /// there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes_sha256: Option<String>,
}

/// A change that is undone unless confirmed in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRollback {
    /// The unconfirmed generation.
    pub generation: u64,
    /// What is applied again at the deadline.
    pub rollback_to: u64,
    pub deadline: String,
    pub confirm_within: String,
    pub requested_by: String,
}

/// Reply to `reload`, `apply` and `rollback`: the generation in force now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The policy file, which holds this generation's text.
    pub policy_file: PathBuf,
    pub generation: u64,
    pub sha256: String,
    /// False when the text equals the generation in force (nothing new recorded).
    pub new_generation: bool,
    /// Set when this change must be confirmed.
    pub pending: Option<PendingRollback>,
    /// An earlier pending rollback this change settled.
    pub settled: Option<PendingRollback>,
    /// For a `reload` of an agent that follows a URL: what the fetch came to.
    #[serde(default)]
    pub fetch: Option<LastFetch>,
}

/// Reply to `prefixes-add` and `prefixes-remove`: the generation in force now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixesChanged {
    pub generation: u64,
    /// The prefixes drop-in, which holds the change (removed when it holds none).
    pub drop_in: PathBuf,
    /// Each prefix with the group it left and the one it joined (null: none).
    pub moved: Vec<crate::drop_in::Moved>,
    /// Trie entries written: inserts, deletes and updates.
    pub map_operations: usize,
    /// Inside the agent: checked, persisted, in the kernel and recorded.
    pub agent_ms: f64,
}

/// Reply to `confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    pub generation: u64,
    /// The rollback that will not happen.
    pub cancelled: PendingRollback,
}

/// Reply to `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The generation in force.
    pub current: Option<u64>,
    pub pending: Option<PendingRollback>,
    /// Oldest first; the last [`crate::agent::HISTORY_KEPT`] are kept.
    pub generations: Vec<Generation>,
}

/// The SMTP verdict a source gets from the group its longest prefix is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpVerdict {
    Block,
    Allow,
    /// In no group: the filter does not touch it.
    Unmanaged,
}

impl SmtpVerdict {
    pub fn name(self) -> &'static str {
        match self {
            SmtpVerdict::Block => "block",
            SmtpVerdict::Allow => "allow",
            SmtpVerdict::Unmanaged => "unmanaged",
        }
    }
}

/// Who decides for a prefix or a source on one side of a change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Side {
    pub group: Option<String>,
    pub verdict: SmtpVerdict,
    /// For `block`: the mode it is carried out in, the group's own or else the policy's
    /// (`monitor`: counted as monitored and passed); null for `allow` and `unmanaged`.
    #[serde(default)]
    pub mode: Option<Mode>,
}

impl Side {
    /// What the source gets, as `plan` prints it: `block`, `monitored` (a block in
    /// monitor mode), `allow` or `unmanaged`.
    pub fn outcome(&self) -> &'static str {
        match (self.verdict, self.mode) {
            (SmtpVerdict::Block, Some(Mode::Monitor)) => "monitored",
            (verdict, _) => verdict.name(),
        }
    }
}

/// One difference between two policies, as `plan` and `diff` list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PolicyChange {
    GroupAdded {
        group: String,
        smtp: Smtp,
        /// The group's own mode; null: the policy's.
        #[serde(default)]
        mode: Option<Mode>,
        prefixes: usize,
    },
    GroupRemoved {
        group: String,
        smtp: Smtp,
        prefixes: usize,
    },
    /// Same verdict and prefixes under another name.
    GroupRenamed {
        from: String,
        to: String,
    },
    GroupSmtp {
        group: String,
        from: Smtp,
        to: Smtp,
    },
    /// A group's own mode set, changed or removed (null: the policy's mode).
    GroupMode {
        group: String,
        from: Option<Mode>,
        to: Option<Mode>,
    },
    /// A prefix of either policy whose group or verdict changes (its longest match on
    /// each side); most specific first.
    Prefix {
        prefix: IpNet,
        from: Side,
        to: Side,
    },
    RelayAdded {
        relay: IpNet,
    },
    RelayRemoved {
        relay: IpNet,
    },
    Ports {
        from: Vec<u16>,
        to: Vec<u16>,
    },
    Mode {
        from: Mode,
        to: Mode,
    },
    Action {
        from: Action,
        to: Action,
    },
    RelayLimit {
        from: Option<RelayLimit>,
        to: Option<RelayLimit>,
    },
    Offenders {
        from: Option<OffenderAlerts>,
        to: Option<OffenderAlerts>,
    },
    Events {
        from: u32,
        to: u32,
    },
    InterfaceAdded {
        interface: String,
    },
    InterfaceRemoved {
        interface: String,
    },
    InterfaceXdpMode {
        interface: String,
        from: String,
        to: String,
    },
}

/// A source seen sending to a filtered port recently whose verdict would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImpactSource {
    /// An IPv4 address or an IPv6 /64.
    pub source: String,
    pub from: Side,
    pub to: Side,
    /// Connection requests (SYNs) seen from it.
    pub attempts: u64,
    pub last_seen: String,
    /// The changed prefix that moves it (its longest match in the policy that has it).
    pub prefix: Option<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    /// Sources last seen longer ago than this are not counted.
    pub window_seconds: u64,
    pub sources: Vec<ImpactSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// No change in effect: exit status 0.
    pub same: bool,
    /// What was compared, e.g. `generation 3 (in force)` and `new.yaml`.
    pub from: String,
    pub to: String,
    pub changes: usize,
    pub prefixes: usize,
    pub sources: usize,
    pub attempts: u64,
    /// Sources the kernel remembers (seen within the window or not).
    pub sources_remembered: usize,
}

/// Reply to `plan` and `diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub changes: Vec<PolicyChange>,
    pub impact: Impact,
    pub summary: PlanSummary,
}

/// Timestamps in replies are RFC 3339 UTC in whole seconds, e.g. `2026-11-28T09:53:50Z`.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Reply to `status`: what the running agent is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub agent: AgentInfo,
    pub interfaces: Vec<AttachedInterface>,
    /// The program on the first interface, if attached anywhere.
    pub program_id: Option<u32>,
    pub policy: PolicyStatus,
    pub last_reload: LastReload,
    pub maps: Vec<MapUsage>,
    /// CLI exemptions in force.
    pub exemptions: usize,
    pub counters: StatusCounters,
    /// Sessions known, and exemptions by subscriber name (an older agent sends none).
    #[serde(default)]
    pub sessions: usize,
    #[serde(default)]
    pub subscriber_exemptions: usize,
    /// Where the policy comes from (an older agent sends none).
    #[serde(default)]
    pub source: Option<SourceStatus>,
}

/// Where the policy in force comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceStatus {
    File {
        path: PathBuf,
        watched: bool,
    },
    Url {
        url: String,
        /// The public key file and its minisign key id.
        key: PathBuf,
        key_id: String,
        poll_seconds: u64,
        /// Where the last good policy and its signature are kept.
        cache: PathBuf,
        /// The ETag of the policy in force, sent as If-None-Match.
        etag: Option<String>,
        last_fetch: Option<LastFetch>,
    },
}

/// The last fetch of the policy URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFetch {
    pub url: String,
    pub at: String,
    pub outcome: crate::source::Outcome,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// `None`: no agent runs, the pinned filter was read directly.
    pub pid: Option<u32>,
    pub version: String,
    pub started_at: String,
    pub pin_path: PathBuf,
}

/// The policy in force, with the limits recovered from what the kernel was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub file: PathBuf,
    pub sha256: String,
    pub loaded_at: String,
    pub generation: u64,
    pub mode: Mode,
    pub groups: usize,
    pub prefixes: usize,
    pub relays: usize,
    pub ports: Vec<u16>,
    pub action: Action,
    pub relay_limit: Option<RelayLimit>,
    pub offenders: Option<OffenderAlerts>,
    pub events: Option<EventRate>,
    /// The prefixes drop-in laid over the policy file, if there is one (an older agent
    /// sends none).
    #[serde(default)]
    pub drop_in: Option<DropInStatus>,
}

/// The prefixes drop-in in force (`filter-agent prefixes add` and `remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropInStatus {
    pub file: PathBuf,
    pub sha256: String,
    /// Prefixes it adds to (or moves into) a group, and prefixes it takes out.
    pub added: usize,
    pub removed: usize,
}

/// The outcome of the last (re)load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    pub ok: bool,
    pub at: String,
    pub message: String,
}

/// How full one kernel map is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapUsage {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

/// The totals `status` shows; `stats` has them broken down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounters {
    pub packets: u64,
    pub blocked: u64,
    pub monitored: u64,
    pub malformed: u64,
    pub rate_limited: u64,
    pub resets_sent: u64,
    pub events_sent: u64,
    pub events_suppressed: u64,
    pub events_lost: u64,
    pub offender_alerts: u64,
    pub offenders_over_threshold: usize,
}

/// The relay limit as `relay_limit:` writes it, recovered from the compiled config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLimit {
    pub syn_per_minute: u64,
    pub burst: u64,
}

impl RelayLimit {
    /// The relay limit in force, if any.
    pub fn of(config: &Config) -> Option<RelayLimit> {
        if config.relay_interval_ns == 0 {
            return None;
        }
        let (syn_per_minute, burst) = rate(
            config.relay_interval_ns,
            config.relay_tolerance_ns,
            60_000_000_000,
        );
        Some(RelayLimit {
            syn_per_minute,
            burst,
        })
    }
}

/// The offender alert threshold and window, as `offenders:` writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffenderAlerts {
    pub alert_after: u64,
    pub window: String,
}

/// The drop-event rate, as `events:` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRate {
    pub per_second: u64,
    pub burst: u64,
}

impl EventRate {
    /// The drop-event rate in force, if events are on.
    pub fn of(config: &Config) -> Option<EventRate> {
        if config.event_interval_ns == 0 {
            return None;
        }
        let (per_second, burst) = rate(
            config.event_interval_ns,
            config.event_tolerance_ns,
            1_000_000_000,
        );
        Some(EventRate { per_second, burst })
    }
}

/// `interval` nanoseconds per token with `tolerance` of burst: the tokens per `period`
/// and the burst, as the policy wrote them.
fn rate(interval: u64, tolerance: u64, period_ns: u64) -> (u64, u64) {
    let per_period = (period_ns as f64 / interval as f64).round() as u64;
    let burst = (tolerance as f64 / interval as f64).round() as u64 + 1;
    (per_period, burst)
}

/// Reply to `stats`: every counter, summed over CPUs; rows with no packets are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub at: String,
    pub by_reason: Vec<ReasonCount>,
    pub by_family: Vec<FamilyCount>,
    pub by_group: Vec<GroupCount>,
    pub by_interface: Vec<InterfaceCount>,
    pub actions: Actions,
    /// Sources whose offender alert window is running.
    pub offenders_over_threshold: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyCount {
    pub family: Family,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCount {
    pub group: String,
    /// The group CLI exemptions are counted in.
    pub exemption_group: bool,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCount {
    /// `other` for frames counted outside any interface slot.
    pub interface: String,
    pub family: Family,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

/// Reply to `exemptions-list`: the policy's allow prefixes, then the CLI exemptions; and
/// the exemptions by subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExemptionList {
    pub exemptions: Vec<ExemptionEntry>,
    #[serde(default)]
    pub subscribers: Vec<SubscriberExemptionEntry>,
}

/// An exemption by subscriber name, with the addresses it is in force on now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberExemptionEntry {
    pub subscriber: String,
    /// The addresses of the subscriber's sessions; empty while offline.
    pub addresses: Vec<IpNet>,
    pub reason: String,
    pub added_by: String,
    pub added_at: String,
    pub expires_at: Option<String>,
}

/// Reply to `sessions-list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub subscriber: String,
    pub feed: Feed,
    /// The BNG of a RADIUS session.
    pub nas: Option<String>,
    pub session_id: String,
    pub addresses: Vec<IpNet>,
    pub started_at: String,
    pub updated_at: String,
    /// Whether the subscriber is exempt by name.
    pub exempt: bool,
}

/// Reply to `sessions-up` and `sessions-down`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionChange {
    /// The session as it is now (`sessions-up`).
    pub up: Option<SessionEntry>,
    /// The sessions ended (`sessions-down`).
    pub down: Vec<SessionEntry>,
    /// Addresses where an exemption has nothing to do (outside every block group).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExemptionEntry {
    pub prefix: IpNet,
    pub source: ExemptionSource,
    pub reason: String,
    pub added_by: String,
    pub added_at: String,
    pub expires_at: Option<String>,
}

/// Where an exemption comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExemptionSource {
    /// An allow group of the policy file.
    Policy,
    /// `filter-agent exemptions add`.
    Cli,
}

impl ExemptionSource {
    /// As on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ExemptionSource::Policy => "policy",
            ExemptionSource::Cli => "cli",
        }
    }
}

/// Reply to `exemptions-add` (`{"added": ...}`) and `exemptions-remove`
/// (`{"removed": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExemptionChange {
    Added(ExemptionEntry),
    Removed(ExemptionEntry),
    SubscriberAdded(SubscriberExemptionEntry),
    SubscriberRemoved(SubscriberExemptionEntry),
}

/// Reply to `explain`: the reference model's verdict on one flow, and what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
    pub verdict: Verdict,
    pub reason: Reason,
    /// The longest source prefix over all groups, with its group.
    pub source_prefix: Option<IpNet>,
    pub group: Option<String>,
    pub smtp: Option<Smtp>,
    pub relay_prefix: Option<IpNet>,
    pub port_filtered: bool,
    /// The policy's mode is `monitor`.
    pub monitor: bool,
    /// The matched group's own mode, which overrides the policy's for it (an older agent
    /// sends none: the policy's).
    #[serde(default)]
    pub group_mode: Option<Mode>,
    /// The policy's action (an older agent sends none: drop).
    #[serde(default = "drop_action")]
    pub action: Action,
    /// The relay limit, when the policy sets one.
    #[serde(default)]
    pub relay_limit: Option<RelayLimit>,
    /// The subscriber whose session holds the source (asked of a running agent).
    #[serde(default)]
    pub subscriber: Option<String>,
}

fn drop_action() -> Action {
    Action::Drop
}

impl Explanation {
    /// The mode that applies to this flow: the group's own, else the policy's.
    pub fn mode(&self) -> Mode {
        match (self.group_mode, self.monitor) {
            (Some(mode), _) => mode,
            (None, true) => Mode::Monitor,
            (None, false) => Mode::Enforce,
        }
    }
}

/// Reply to `offenders`: the sources most likely infected, first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offenders {
    pub at: String,
    /// Sources the kernel has a record of.
    pub sources: usize,
    pub over_threshold: usize,
    /// 0: offender alerts are off.
    pub alert_after: u64,
    pub window: String,
    pub destinations_note: String,
    pub offenders: Vec<OffenderRow>,
}

/// One source of `filter-agent offenders`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffenderRow {
    /// An IPv4 address or an IPv6 /64.
    pub source: String,
    pub family: Family,
    pub group: String,
    pub attempts: u64,
    /// Attempts in the current alert window (0 once it has ended).
    pub in_window: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// Approximate (linear counting over a 64-bit sketch).
    pub destinations: u64,
    pub destinations_saturated: bool,
    pub last_destination: String,
    pub over_threshold: bool,
    /// The subscriber whose session holds the source now, if known.
    #[serde(default)]
    pub subscriber: Option<String>,
}

/// Parses one request, checking in the order that gives the most useful error: JSON, then
/// the version (a newer client's fields mean nothing here), then the command, then its
/// fields.
pub(super) fn parse_request(bytes: &[u8]) -> Result<Request, ControlError> {
    let bad = |message: String| ControlError::BadRequest(message);
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed request: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(bad(format!(
            "malformed request: expected a JSON object, got {}",
            json_type(&value)
        )));
    };
    match object.remove("version") {
        None => {
            return Err(bad(format!(
                "missing \"version\" (this agent speaks {PROTOCOL_VERSION})"
            )));
        }
        Some(version) if version.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(version) => {
            return Err(bad(format!(
                "unsupported protocol version {version} (this agent speaks {PROTOCOL_VERSION})"
            )));
        }
    }
    let command = match object.get("command") {
        None => return Err(bad("missing \"command\"".to_string())),
        Some(Value::String(command)) if COMMANDS.contains(&command.as_str()) => command.clone(),
        Some(command @ Value::String(_)) => {
            return Err(bad(format!(
                "unknown command {command} (known: {})",
                COMMANDS.join(", ")
            )));
        }
        Some(other) => {
            return Err(bad(format!(
                "\"command\" must be a string, got {}",
                json_type(other)
            )));
        }
    };
    let request: Request = serde_json::from_value(Value::Object(object.clone()))
        .map_err(|e| bad(format!("invalid {command} request: {e}")))?;
    // Unknown fields are refused rather than ignored: a misspelt `expires` must not add an
    // exemption that never expires. (serde's deny_unknown_fields misses unit variants.)
    let known = serde_json::to_value(&request).expect("a request always serializes");
    if let Some(unknown) = object.keys().find(|key| known.get(key.as_str()).is_none()) {
        return Err(bad(format!(
            "invalid {command} request: unknown field `{unknown}`"
        )));
    }
    Ok(request)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The request as written on the wire, newline included.
pub(super) fn encode_request(request: &Request) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(&Envelope {
        version: PROTOCOL_VERSION,
        request,
    })
    .expect("a request always serializes");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One of each variant (the exhaustive match makes a new variant fail to compile here
    /// until it is added).
    fn every_request() -> Vec<Request> {
        let all = vec![
            Request::Status,
            Request::Stats,
            Request::ExemptionsList,
            Request::ExemptionsAdd {
                prefix: "192.0.2.7/32".into(),
                reason: "ticket 42".into(),
                expires: Some("2h".into()),
                until: None,
            },
            Request::ExemptionsAdd {
                prefix: "2001:db8::/64".into(),
                reason: "lab".into(),
                expires: None,
                until: Some("2030-01-01T00:00:00Z".into()),
            },
            Request::ExemptionsRemove {
                prefix: "192.0.2.7/32".into(),
            },
            Request::Explain {
                src: "100.64.1.2".parse().unwrap(),
                dst: "2001:db8::25".parse().unwrap(),
                dport: 25,
            },
            Request::Offenders { top: Some(5) },
            Request::Offenders { top: None },
            Request::SessionsUp {
                subscriber: "alice".into(),
                addresses: vec!["100.64.0.20".into(), "2001:db8:1000:20::/64".into()],
                session_id: Some("ppp0-1234".into()),
            },
            Request::SessionsDown {
                subscriber: None,
                session_id: Some("ppp0-1234".into()),
            },
            Request::SessionsList,
            Request::SubscriberExemptionsAdd {
                subscriber: "alice".into(),
                reason: "ticket 4711".into(),
                expires: None,
                until: None,
            },
            Request::SubscriberExemptionsRemove {
                subscriber: "alice".into(),
            },
            Request::Reload,
            Request::Apply {
                // The text follows the line; it is not part of it.
                policy: PolicyUpload {
                    name: "new.yaml".into(),
                    bytes: 1234,
                    text: String::new(),
                },
                confirm_within: Some("5m".into()),
            },
            Request::Confirm,
            Request::Rollback {
                to: Some(3),
                confirm_within: None,
            },
            Request::History,
            Request::Plan {
                policy: PolicyUpload {
                    name: "new.yaml".into(),
                    bytes: 10,
                    text: String::new(),
                },
                window_seconds: Some(600),
            },
            Request::Diff {
                from: 3,
                to: 5,
                window_seconds: None,
            },
            Request::PrefixesAdd {
                group: "residential".into(),
                prefixes: vec!["198.18.0.0/24".into(), "2001:db8:9::/48".into()],
            },
            Request::PrefixesRemove {
                prefixes: vec!["198.18.0.0/24".into()],
            },
        ];
        for request in &all {
            match request {
                Request::Status
                | Request::Stats
                | Request::ExemptionsList
                | Request::ExemptionsAdd { .. }
                | Request::ExemptionsRemove { .. }
                | Request::Explain { .. }
                | Request::Offenders { .. }
                | Request::SessionsUp { .. }
                | Request::SessionsDown { .. }
                | Request::SessionsList
                | Request::SubscriberExemptionsAdd { .. }
                | Request::SubscriberExemptionsRemove { .. } => {}
                Request::Reload
                | Request::Apply { .. }
                | Request::Confirm
                | Request::Rollback { .. }
                | Request::History
                | Request::Plan { .. }
                | Request::Diff { .. } => {}
                Request::PrefixesAdd { .. } | Request::PrefixesRemove { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_request_round_trips_through_the_wire_format() {
        for request in every_request() {
            let bytes = encode_request(&request);
            assert_eq!(bytes.last(), Some(&b'\n'));
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(value["version"], json!(PROTOCOL_VERSION));
            let command = value["command"].as_str().unwrap();
            assert!(
                COMMANDS.contains(&command),
                "{command} missing from COMMANDS"
            );
            assert_eq!(parse_request(&bytes), Ok(request));
        }
        let mut names: Vec<String> = every_request()
            .iter()
            .map(|r| {
                serde_json::to_value(r).unwrap()["command"]
                    .as_str()
                    .unwrap()
                    .into()
            })
            .collect();
        names.dedup();
        assert_eq!(names, COMMANDS);
    }

    #[test]
    fn wire_format_is_flat_and_kebab_case() {
        let request = Request::ExemptionsRemove {
            prefix: "192.0.2.0/24".into(),
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&encode_request(&request)).unwrap(),
            json!({"version": 1, "command": "exemptions-remove", "prefix": "192.0.2.0/24"})
        );
        // Optional fields may be left out.
        assert_eq!(
            parse_request(br#"{"version":1,"command":"exemptions-add","prefix":"p","reason":"r"}"#),
            Ok(Request::ExemptionsAdd {
                prefix: "p".into(),
                reason: "r".into(),
                expires: None,
                until: None
            })
        );
    }

    #[test]
    fn offenders_top_may_be_left_out() {
        assert_eq!(
            parse_request(br#"{"version":1,"command":"offenders"}"#),
            Ok(Request::Offenders { top: None })
        );
        assert_eq!(
            parse_request(br#"{"version":1,"command":"offenders","top":3}"#),
            Ok(Request::Offenders { top: Some(3) })
        );
        assert!(
            parse_error(r#"{"version":1,"command":"offenders","top":-1}"#)
                .starts_with("invalid offenders request: invalid value: integer `-1`")
        );
        assert!(
            parse_error(r#"{"version":1,"command":"offenders","limit":3}"#)
                .starts_with("invalid offenders request: unknown field `limit`")
        );
    }

    #[test]
    fn only_changes_are_mutations() {
        let mutations: Vec<bool> = every_request().iter().map(Request::is_mutation).collect();
        assert_eq!(
            mutations,
            [
                false, false, false, true, true, true, false, false, false, true, true, false,
                true, true, true, true, true, true, false, false, false, true, true
            ],
            "{:?}",
            every_request()
        );
    }

    fn parse_error(input: &str) -> String {
        match parse_request(input.as_bytes()) {
            Err(ControlError::BadRequest(message)) => message,
            other => panic!("{input}: expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(
            parse_error("garbage"),
            "malformed request: expected value at line 1 column 1"
        );
        assert!(parse_error(r#"{"version":1,"comm"#).starts_with("malformed request: EOF"));
        assert_eq!(
            parse_error("[1]"),
            "malformed request: expected a JSON object, got an array"
        );
        assert_eq!(
            parse_error(r#"{"command":"status"}"#),
            "missing \"version\" (this agent speaks 1)"
        );
        assert_eq!(
            parse_error(r#"{"version":7,"command":"status"}"#),
            "unsupported protocol version 7 (this agent speaks 1)"
        );
        assert_eq!(
            parse_error(r#"{"version":"1","command":"status"}"#),
            "unsupported protocol version \"1\" (this agent speaks 1)"
        );
        assert_eq!(parse_error(r#"{"version":1}"#), "missing \"command\"");
        assert!(
            parse_error(r#"{"version":1,"command":"frobnicate"}"#)
                .starts_with("unknown command \"frobnicate\" (known: status, stats,")
        );
        assert_eq!(
            parse_error(r#"{"version":1,"command":5}"#),
            "\"command\" must be a string, got a number"
        );
        assert_eq!(
            parse_error(r#"{"version":1,"command":"exemptions-remove"}"#),
            "invalid exemptions-remove request: missing field `prefix`"
        );
        assert!(
            parse_error(r#"{"version":1,"command":"explain","src":"x","dst":"::1","dport":25}"#)
                .starts_with("invalid explain request: invalid IP address syntax")
        );
        assert!(
            parse_error(
                r#"{"version":1,"command":"exemptions-add","prefix":"p","reason":"r","expire":"1h"}"#
            )
            .starts_with("invalid exemptions-add request: unknown field `expire`")
        );
        assert!(
            parse_error(r#"{"version":1,"command":"status","verbose":true}"#)
                .starts_with("invalid status request: unknown field `verbose`")
        );
    }

    #[test]
    fn replies_serialize_without_empty_fields() {
        assert_eq!(
            serde_json::to_value(Reply::success(json!({"a": 1}))).unwrap(),
            json!({"version": 1, "ok": true, "result": {"a": 1}})
        );
        let denied = ControlError::PermissionDenied("needs root".into());
        let reply = Reply::failure(&denied);
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            json!({"version": 1, "ok": false, "error": "permission denied: needs root",
                   "kind": "permission-denied"})
        );
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
        assert_eq!(ControlError::BadRequest("x".into()).to_string(), "x");
        assert_eq!(
            Reply::<Value>::failure(&ControlError::Failed("y".into())).kind,
            Some(ErrorKind::Failed)
        );
    }
}
