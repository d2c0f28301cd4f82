//! What `filter-agent run` needs to know; the CLI's arguments convert into it, so the
//! agent does not depend on the command line.

use std::{net::SocketAddr, path::PathBuf};

use crate::source::PolicySource;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentOptions {
    /// The policy file (re-read on SIGHUP and `reload`, and when it changes if watched),
    /// or the URL of a signed policy (fetched every poll, on SIGHUP and `reload`).
    pub source: PolicySource,
    /// Where maps and links are pinned.
    pub pin_path: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// Group of the control socket: its members may read.
    pub socket_group: Option<String>,
    /// Members of this group may also change exemptions.
    pub writers_group: Option<String>,
    /// Where everything that must survive a restart is kept (created if missing).
    pub state_dir: PathBuf,
    /// Where CLI exemptions are kept across restarts (by default inside `state_dir`).
    pub state_file: PathBuf,
    /// Where to serve metrics, if at all.
    pub metrics: Option<SocketAddr>,
    /// `--web-config`: TLS and basic auth for the metrics endpoint.
    pub web_config: Option<PathBuf>,
}
