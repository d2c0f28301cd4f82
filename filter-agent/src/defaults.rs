//! Where the agent keeps things unless told otherwise: the one place for these paths,
//! read by the CLI's defaults (and so by `--help` and the man pages) and by the agent.

/// Where maps and links are pinned (bpffs).
pub const PIN_PATH: &str = "/sys/fs/bpf/filter-agent";
/// The control socket the CLI talks to (systemd's RuntimeDirectory).
pub const CONTROL_SOCKET: &str = "/run/filter-agent/control.sock";
/// Where exemptions granted from the CLI are kept across restarts (StateDirectory).
pub const STATE_FILE: &str = "/var/lib/filter-agent/exemptions.yaml";
