//! Command-line definitions; `run` dispatches them.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    agent::{AgentOptions, LogFormat, PinnedFilter},
    control::protocol::DEFAULT_TOP_OFFENDERS,
    defaults, replay,
    source::{PolicySource, UrlSource},
};

#[derive(Parser, Debug)]
#[command(
    name = "filter-agent",
    version,
    about = "XDP filter that keeps restricted ISP customers from sending SMTP (TCP/25) anywhere but the relays",
    after_help = "Exit status: 0 success, 1 failure, 2 usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: load and attach the filter to the policy's interfaces, then keep
    /// it in step with the policy file (reload on SIGHUP or when the file changes).
    /// Stopping the agent leaves the filter enforcing; `detach` removes it.
    #[command(after_help = "Examples:
  filter-agent run --policy /etc/filter-agent/policy.yaml
  filter-agent run --policy policies/lab.yaml --pin-path /sys/fs/bpf/filter-agent-lab
  filter-agent run --policy-url https://policy.example.net/edge.yaml --policy-key /etc/filter-agent/policy.pub --poll 30s
  kill -HUP $(pidof filter-agent)     # reload now (with --policy-url: fetch now)

Logging: RUST_LOG=debug for more detail; one event per line.")]
    Run(RunArgs),
    /// Make an Ed25519 key pair for signing policies (minisign's format, no password):
    /// KEY (mode 0600, the secret: keep it on the signing host) and KEY.pub (for the
    /// agents' --policy-key). Existing files are never overwritten.
    #[command(after_help = "Examples:
  filter-agent keygen --out /etc/filter-agent/signing.key
  scp /etc/filter-agent/signing.key.pub router1:/etc/filter-agent/policy.pub")]
    Keygen {
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
    },
    /// Sign a policy file: writes POLICY.yaml.sig (minisign's format; `minisign -Vm
    /// POLICY.yaml -p KEY.pub` verifies it). A key with a password asks for it on the
    /// terminal.
    #[command(after_help = "Examples:
  filter-agent check --policy edge.yaml && filter-agent sign --key signing.key edge.yaml
  minisign -S -s signing.key -m edge.yaml      # the same, with the minisign tool")]
    Sign {
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[arg(value_name = "POLICY.yaml")]
        policy: PathBuf,
    },
    /// Check POLICY.yaml.sig against POLICY.yaml and a public key: exit 0 valid, 1 not
    /// valid, 2 when a file cannot be read.
    #[command(after_help = "Example:\n  filter-agent verify --key policy.pub edge.yaml")]
    Verify {
        #[arg(long, value_name = "KEY.pub")]
        key: PathBuf,
        #[arg(value_name = "POLICY.yaml")]
        policy: PathBuf,
    },
    /// What the running agent is doing: interfaces, program, policy, maps, counters.
    #[command(
        after_help = "Examples:\n  filter-agent status\n  filter-agent status --json | jq .policy"
    )]
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        pinned: PinnedArgs,
    },
    /// Packets and bytes per reason, family, group and interface; with rates when watching.
    #[command(
        after_help = "Examples:\n  filter-agent stats\n  filter-agent stats --watch 5\n  filter-agent stats --json"
    )]
    Stats {
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS and show rates since the previous round.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        pinned: PinnedArgs,
    },
    /// The sources with the most blocked attempts, most likely infected first: the abuse
    /// desk's daily view. IPv6 sources are counted per /64.
    #[command(after_help = "Examples:
  filter-agent offenders
  filter-agent offenders --top 100
  filter-agent offenders --json | jq '.offenders[] | select(.over_threshold)'

Sorted by attempts in the current alert window (offenders.window in the policy), then by
attempts overall. OVER THRESHOLD is yes while a source has made at least
offenders.alert_after attempts in a window that has not ended. DESTINATIONS is an
estimate of the distinct destinations tried (linear counting over a 64-bit sketch):
close for a handful, saturated (shown as ≥266) beyond a few hundred.")]
    Offenders {
        /// List this many sources.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_TOP_OFFENDERS, value_parser = parse_top)]
        top: usize,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        pinned: PinnedArgs,
    },
    /// Per-customer permission to send on port 25 (the abuse desk's tool).
    Exemptions {
        #[command(subcommand)]
        command: ExemptionsCommand,
        #[arg(long, global = true, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        pinned: PinnedArgs,
    },
    /// Subscriber sessions: who is online with which addresses. `up` and `down` are what
    /// the BNG's hooks call (packaging/ppp/ip-up and ip-down for pppd); RADIUS accounting
    /// (subscribers.radius_accounting in the policy) feeds the same table.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
        #[arg(long, global = true, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Add prefixes to the policy's groups, or take them out, through the running agent:
    /// for IPAM integrations. Applied at once and hole-free, checked as a policy file is,
    /// and kept in the prefixes drop-in beside the policy file (POLICY.prefixes.yaml),
    /// which the agent lays over the policy file at every load; the policy file itself is
    /// never written. Each change is a generation in the history (`rollback` undoes it).
    Prefixes {
        #[command(subcommand)]
        command: PrefixesCommand,
        #[arg(long, global = true, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Write shell completions (bash, zsh, fish) and man pages into DIR.
    #[command(hide = true)]
    Docs {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Remove the filter from every interface and delete its pinned maps.
    #[command(after_help = "Example:\n  filter-agent detach --pin-path /sys/fs/bpf/filter-agent")]
    Detach {
        #[arg(long, value_name = "DIR", default_value = defaults::PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Validate a policy file and print its warnings; no root needed.
    #[command(
        after_help = "Examples:\n  filter-agent check --policy policies/example.yaml\n  filter-agent check --policy new.yaml --json"
    )]
    Check {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Print {"ok", "errors", "warnings"} with each diagnostic's file, line, column,
        /// message and hint.
        #[arg(long)]
        json: bool,
    },
    /// Run captured frames through the real XDP program (not attached) and print the
    /// kernel's verdict for each; with --baseline, only what a policy change changes.
    /// Needs root (or --engine model).
    #[command(after_help = "Examples:
  filter-agent replay --policy policies/example.yaml capture.pcapng
  filter-agent replay --policy tests/corpus/policy.yaml --expect tests/corpus/corpus.expect tests/corpus/corpus.pcap
  filter-agent replay --policy p.yaml --format json capture.pcap > verdicts.jsonl
  filter-agent replay --policy tests/corpus/reject.yaml --replies replies.pcap tests/corpus/reject.pcap
  filter-agent replay --policy new.yaml --baseline old.yaml --fail-on-change yesterday.pcap
  filter-agent replay --policy p.yaml --expect p.expect --format junit ci/*.pcap > replay.xml

Captures: pcap (either byte order, micro- or nanosecond) and pcapng (any interfaces,
options and blocks), with Ethernet, Linux cooked (SLL, SLL2, `tcpdump -i any`) or raw
IPv4/IPv6 frames; records of other link types are reported as skipped. Frames cut by a
snap length are judged on the bytes captured and marked truncated.

The --expect file has one line per frame, `N VERDICT REASON  # comment` (N counts frames
across all captures from 1; `N skipped` for a record that is not judged), or JSON lines
as printed by --format json.

Exit status: 0 every frame as expected (and, with --fail-on-change, none changed),
1 a mismatch against --expect or a change under --fail-on-change, 2 replay could not
run (no root or BPF, an unreadable or invalid policy, an unreadable capture).")]
    Replay {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The policy in force today: judge every frame under both and print only the
        /// frames whose verdict or reason differs, grouped by source prefix and group.
        #[arg(long, value_name = "FILE")]
        baseline: Option<PathBuf>,
        /// With --baseline: exit 1 when any frame changes.
        #[arg(long, requires = "baseline")]
        fail_on_change: bool,
        #[arg(long, value_enum, default_value_t = replay::Format::Table)]
        format: replay::Format,
        /// Who judges: the kernel program (needs root), or the reference model for
        /// runners without BPF (every output then says so).
        #[arg(long, value_enum, default_value_t = replay::Engine::Kernel)]
        engine: replay::Engine,
        /// Expected verdicts; exit 1 listing every frame whose verdict differs.
        #[arg(long, value_name = "FILE")]
        expect: Option<PathBuf>,
        /// Write the frames the program sent back (reject's TCP resets) to this pcap, in
        /// frame order.
        #[arg(long, value_name = "FILE")]
        replies: Option<PathBuf>,
        /// pcap or pcapng files.
        #[arg(required = true, value_name = "CAPTURE")]
        captures: Vec<PathBuf>,
    },
    /// Show what the policy does with one TCP flow, and which group and prefix decide it.
    /// Without --policy, asks the running agent (its policy and CLI exemptions); with
    /// --policy, uses that file (reference model; no root needed).
    #[command(after_help = "Examples:
  filter-agent explain --src 100.64.1.2 --dst 203.0.113.9
  filter-agent explain --policy policies/example.yaml --src 100.64.1.2 --dst 203.0.113.9
  filter-agent explain --policy policies/example.yaml --src 2001:db8:1000::5 --dst 2001:db8:ffff::25 --json")]
    Explain {
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
        #[arg(long, value_name = "ADDR")]
        src: IpAddr,
        #[arg(long, value_name = "ADDR")]
        dst: IpAddr,
        #[arg(long, value_name = "PORT", default_value_t = 25, value_parser = clap::value_parser!(u16).range(1..))]
        dport: u16,
        #[arg(long)]
        json: bool,
    },
    /// Ask the agent to re-read its policy file and wait: exit 0 when applied, 1 (with
    /// the errors, each at its line) when refused; the policy in force then stays. An
    /// agent that follows --policy-url fetches it now instead (exit 1 when refused).
    #[command(after_help = "Examples:
  filter-agent reload
  systemctl reload filter-agent     # ExecReload runs `filter-agent reload`")]
    Reload {
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Apply a policy through the agent (the same hole-free sync as a reload) and write it
    /// to the agent's policy file, so file and kernel agree. With --confirm-within, the
    /// agent applies the previous generation again by itself unless `confirm` comes in
    /// time, also across a restart or kill -9 of the agent.
    #[command(after_help = "Examples:
  filter-agent plan --policy new.yaml
  filter-agent apply --policy new.yaml --confirm-within 5m
  filter-agent confirm

Exit status 1 when the policy is refused: nothing changed.")]
    Apply {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Roll back unless `filter-agent confirm` comes within DURATION (10s to 1d, e.g. 5m).
        #[arg(long, value_name = "DURATION", value_parser = parse_confirm_within)]
        confirm_within: Option<String>,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Compare a policy with the one in force: what changes (groups, prefixes with their
    /// old and new group and verdict, relays, ports, mode, action, limits) and the
    /// customers seen sending to the filtered ports recently whose verdict would change.
    #[command(after_help = "Examples:
  filter-agent plan --policy new.yaml
  filter-agent plan --policy new.yaml --window 24h
  filter-agent plan --policy new.yaml --json | jq '.impact.sources[]'

Exit status: 0 when the policy equals the one in force in effect, 1 when it differs, 2 on
an error (an invalid policy, no agent).")]
    Plan {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Count the sources seen within this long (the kernel remembers 65,536).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_window)]
        window: u64,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// The changes between two kept generations, as `plan` shows them.
    #[command(after_help = "Examples:
  filter-agent history
  filter-agent diff 7 8
  filter-agent diff 7 8 --json

Exit status as for `plan`: 0 no change in effect, 1 changes, 2 error.")]
    Diff {
        #[arg(value_name = "GEN_A")]
        from: u64,
        #[arg(value_name = "GEN_B")]
        to: u64,
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_window)]
        window: u64,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Keep the change applied with --confirm-within: its rollback is cancelled.
    #[command(after_help = "Example:\n  filter-agent confirm")]
    Confirm {
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Apply an earlier generation of the policy again, byte for byte, and write it to the
    /// policy file (default: the generation before the one in force).
    #[command(after_help = "Examples:
  filter-agent history
  filter-agent rollback
  filter-agent rollback --to 12 --confirm-within 10m")]
    Rollback {
        /// The generation to apply again (see `filter-agent history`).
        #[arg(long, value_name = "GENERATION")]
        to: Option<u64>,
        /// As for `apply`: roll back again unless confirmed within DURATION.
        #[arg(long, value_name = "DURATION", value_parser = parse_confirm_within)]
        confirm_within: Option<String>,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// The generations of the policy applied (the last 50): when, how (start, file change,
    /// SIGHUP, reload, apply, rollback), by whom, and the text's SHA-256.
    #[command(after_help = "Examples:\n  filter-agent history\n  filter-agent history --json")]
    History {
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
        socket: PathBuf,
    },
}

/// `--window`: how far back `plan` counts sources, in seconds.
fn parse_window(text: &str) -> Result<u64, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.as_secs() > 0 => Ok(d.as_secs()),
        Ok(_) => Err("must be at least 1s".into()),
        Err(e) => Err(format!("{e} (e.g. 30m, 1h, 1d)")),
    }
}

/// `--confirm-within`, checked before anything is sent.
fn parse_confirm_within(text: &str) -> Result<String, String> {
    crate::agent::parse_confirm_within(text).map(|_| text.to_string())
}

/// Where a stopped agent left its filter: `status`, `stats`, `offenders` and
/// `exemptions list` read it directly (as root) when no agent answers.
#[derive(Args, Debug, Clone)]
pub struct PinnedArgs {
    /// The agent's pin path, read when the agent is not running.
    #[arg(long, global = true, value_name = "DIR", default_value = defaults::PIN_PATH)]
    pub pin_path: PathBuf,
    /// The agent's state directory (policy history, exemptions, sessions), read when the
    /// agent is not running.
    #[arg(long, global = true, value_name = "DIR", default_value = defaults::STATE_DIR)]
    pub state_dir: PathBuf,
}

impl From<PinnedArgs> for PinnedFilter {
    fn from(args: PinnedArgs) -> Self {
        PinnedFilter {
            pin_path: args.pin_path,
            state_dir: args.state_dir,
        }
    }
}

/// `filter-agent run`'s options.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The policy file; watched, and re-read on SIGHUP and `filter-agent reload`.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "policy_url",
        conflicts_with = "policy_url"
    )]
    pub policy: Option<PathBuf>,
    /// Do not watch the policy file: read it only at start, on SIGHUP and on
    /// `filter-agent reload` (for sites where saving a file must not change the network).
    #[arg(long, conflicts_with = "policy_url")]
    pub no_watch: bool,
    /// Follow a signed policy at URL (http or https) instead of a file: URL and URL.sig
    /// are fetched every --poll, on SIGHUP and on `filter-agent reload`; the last good
    /// one is kept in STATE_DIR for a start while the server is down.
    #[arg(long, value_name = "URL", requires = "policy_key")]
    pub policy_url: Option<String>,
    /// The minisign public key (KEY.pub, from `filter-agent keygen` or `minisign -G`)
    /// the policy at --policy-url must be signed with.
    #[arg(long, value_name = "KEY.pub", requires = "policy_url")]
    pub policy_key: Option<PathBuf>,
    /// How often to fetch --policy-url (each wait random between 80 % and 100 % of it).
    #[arg(long, value_name = "DURATION", requires = "policy_url", value_parser = crate::source::parse_poll)]
    pub poll: Option<std::time::Duration>,
    /// CA certificates (PEM) an https --policy-url must chain to.
    #[arg(long, value_name = "FILE", requires = "policy_url", default_value = defaults::POLICY_CA)]
    pub policy_ca: PathBuf,
    /// Where maps and links are pinned (bpffs is mounted there if needed).
    #[arg(long, value_name = "DIR", default_value = defaults::PIN_PATH)]
    pub pin_path: PathBuf,
    /// The control socket the CLI talks to (mode 0660, owner root).
    #[arg(long, value_name = "PATH", default_value = defaults::CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Group of the control socket: its members may read status, stats, exemptions and
    /// offenders.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Members of this group may also add and remove exemptions (root always may).
    #[arg(long, value_name = "GROUP")]
    pub writers_group: Option<String>,
    /// Where the agent keeps what must survive a restart (exemptions and the rest).
    #[arg(long, value_name = "DIR", default_value = defaults::STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where exemptions granted from the CLI are kept across restarts
    /// [default: STATE_DIR/exemptions.yaml].
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Serve Prometheus/OpenMetrics metrics on ADDR:PORT (path /metrics).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// TLS and basic auth for the metrics endpoint, in the Prometheus exporter-toolkit
    /// format (tls_server_config: cert_file, key_file; basic_auth_users: user: bcrypt
    /// hash). Checked at start: a bad file stops the agent before anything is attached.
    #[arg(long, value_name = "FILE", requires = "metrics")]
    pub web_config: Option<PathBuf>,
    /// Log lines as key=value text, or as one JSON object per line (with ts, level, and
    /// an event's fields, or message) for log pipelines.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl From<RunArgs> for AgentOptions {
    fn from(args: RunArgs) -> AgentOptions {
        let RunArgs {
            policy,
            no_watch,
            policy_url,
            policy_key,
            poll,
            policy_ca,
            pin_path,
            socket,
            socket_group,
            writers_group,
            state_dir,
            state_file,
            metrics,
            web_config,
            // Taken by `init_logging` before the agent starts.
            log_format: _,
        } = args;
        // clap holds --policy and --policy-url (with --policy-key) exclusive, one required.
        let source = match (policy, policy_url, policy_key) {
            (_, Some(url), Some(key)) => PolicySource::Url(UrlSource {
                url,
                key,
                poll: poll.unwrap_or_else(|| {
                    crate::source::parse_poll(defaults::POLICY_POLL).expect("the default poll")
                }),
                ca: policy_ca,
            }),
            (path, ..) => PolicySource::File {
                path: path.unwrap_or_default(),
                watch: !no_watch,
            },
        };
        AgentOptions {
            source,
            pin_path,
            socket,
            socket_group,
            writers_group,
            state_file: state_file.unwrap_or_else(|| state_dir.join(defaults::EXEMPTIONS_FILE)),
            state_dir,
            metrics,
            web_config,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum PrefixesCommand {
    /// Put PREFIX (several may be given) into group NAME of the policy. A prefix already
    /// in a group is refused (a prefix belongs to one group): remove it first to move it.
    #[command(after_help = "Examples:
  filter-agent prefixes add --group residential 100.72.0.0/16
  filter-agent prefixes add --group residential 198.18.0.0/24 2001:db8:5000::/40 --json

Exit status 1 when refused (a bad prefix, host bits set, an unknown group, a prefix
already in a group or exempted from the CLI, no room in the maps): nothing changed.")]
    Add {
        /// A group of the policy.
        #[arg(long, value_name = "NAME")]
        group: String,
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<String>,
        /// Print the generation and each prefix's move as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take PREFIX (several may be given) out of the group it is in, whether the policy
    /// file or an earlier `prefixes add` put it there.
    #[command(after_help = "Examples:
  filter-agent prefixes remove 100.72.0.0/16
  filter-agent prefixes remove 198.18.0.0/24 2001:db8:5000::/40 --json

Exit status 1 when refused (a bad prefix, one in no group): nothing changed.")]
    Remove {
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<String>,
        /// Print the generation and each prefix's move as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// A subscriber's session holds these addresses now (replacing what that session held;
    /// an address another session held moves here: the newest claim wins).
    #[command(after_help = "Examples:
  filter-agent sessions up --subscriber alice --address 100.64.0.20
  filter-agent sessions up --subscriber alice --address 100.64.0.20 --address 2001:db8:1000:20::/56 --session-id ppp0-4242

Without --session-id the subscriber's name identifies the session (one per subscriber).")]
    Up {
        #[arg(long, value_name = "NAME")]
        subscriber: String,
        /// An IPv4 address, an IPv6 address or prefix (repeat for several).
        #[arg(long = "address", value_name = "ADDR", required = true)]
        addresses: Vec<String>,
        #[arg(long, value_name = "ID")]
        session_id: Option<String>,
    },
    /// Sessions end: every session of a subscriber, or the hook session with this id.
    #[command(after_help = "Examples:
  filter-agent sessions down --subscriber alice
  filter-agent sessions down --session-id ppp0-4242")]
    Down {
        #[arg(
            long,
            value_name = "NAME",
            required_unless_present = "session_id",
            conflicts_with = "session_id"
        )]
        subscriber: Option<String>,
        #[arg(long, value_name = "ID")]
        session_id: Option<String>,
    },
    /// Every session: subscriber, feed, BNG, session id, addresses, since when.
    #[command(
        after_help = "Examples:\n  filter-agent sessions list\n  filter-agent sessions list --json"
    )]
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExemptionsCommand {
    /// Let PREFIX, or every address of a subscriber's sessions, send on port 25, at once
    /// and across restarts. A prefix must lie in a block group.
    #[command(after_help = "Examples:
  filter-agent exemptions add 100.64.12.34/32 --reason \"ticket 4711: own MTA\"
  filter-agent exemptions add 2001:db8:1000:42::/64 --reason \"pilot\" --expires 7d
  filter-agent exemptions add 100.64.12.34 --reason \"migration\" --until 2026-12-31T23:00:00Z
  filter-agent exemptions add --subscriber alice --reason \"ticket 4711: own MTA\" --expires 30d

By subscriber, the exemption follows the subscriber's sessions: it is in force on the
addresses they hold now, moves with every reconnect and leaves the kernel while offline.")]
    Add {
        #[arg(
            value_name = "PREFIX",
            required_unless_present = "subscriber",
            conflicts_with = "subscriber"
        )]
        prefix: Option<String>,
        /// Exempt this subscriber (by the name the hooks and RADIUS report) instead.
        #[arg(long, value_name = "NAME")]
        subscriber: Option<String>,
        /// Why (a ticket number, a name): shown in `list` and the logs.
        #[arg(long)]
        reason: String,
        /// Remove it after this long (30m, 12h, 7d).
        #[arg(long, value_name = "DURATION", conflicts_with = "until")]
        expires: Option<String>,
        /// Remove it at this time (RFC 3339, e.g. 2026-12-31T23:00:00Z).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
    },
    /// Revoke an exemption granted with `add`.
    #[command(
        after_help = "Examples:\n  filter-agent exemptions remove 100.64.12.34/32\n  filter-agent exemptions remove --subscriber alice"
    )]
    Remove {
        #[arg(
            value_name = "PREFIX",
            required_unless_present = "subscriber",
            conflicts_with = "subscriber"
        )]
        prefix: Option<String>,
        #[arg(long, value_name = "NAME")]
        subscriber: Option<String>,
    },
    /// Every exemption: policy allow prefixes (source policy), CLI ones (source cli), and
    /// those by subscriber with the addresses they are in force on.
    #[command(
        after_help = "Examples:\n  filter-agent exemptions list\n  filter-agent exemptions list --json"
    )]
    List {
        #[arg(long)]
        json: bool,
    },
}

fn parse_top(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
