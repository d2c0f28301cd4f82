//! Where the agent keeps things unless told otherwise: the one place for these paths,
//! read by the CLI's defaults (and so by `--help` and the man pages) and by the agent.

/// Where maps and links are pinned (bpffs).
pub const PIN_PATH: &str = "/sys/fs/bpf/filter-agent";
/// The control socket the CLI talks to (systemd's RuntimeDirectory).
pub const CONTROL_SOCKET: &str = "/run/filter-agent/control.sock";
/// Where the agent keeps what must survive a restart (systemd's StateDirectory): the
/// exemptions granted from the CLI and everything else the agent persists.
pub const STATE_DIR: &str = "/var/lib/filter-agent";
/// The exemptions file's name inside the state directory.
pub const EXEMPTIONS_FILE: &str = "exemptions.yaml";
/// The last good policy fetched from `--policy-url`, with its signature, inside the state
/// directory.
pub const FETCHED_POLICY_FILE: &str = "fetched-policy.json";
/// How often `--policy-url` is polled.
pub const POLICY_POLL: &str = "30s";
/// The CA certificates an https `--policy-url` must chain to: Debian's bundle of the
/// system's trusted roots (ca-certificates; `update-ca-certificates` adds a private CA).
pub const POLICY_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
