//! Named network namespaces, as `ip netns add` creates them under /run/netns.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context;
use nix::sched::{CloneFlags, setns};

/// `/run/netns/NAME`.
pub fn path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// `nsenter --net=PATH PROGRAM`: runs in the namespace but keeps the host's mount
/// namespace, so /sys/fs/bpf (pinned maps and links) stays visible. (`ip netns exec` and
/// `ip -n` remount /sys and hide it.)
pub fn command(path: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut net = OsString::from("--net=");
    net.push(path);
    let mut cmd = Command::new("nsenter");
    cmd.arg(net).arg(program);
    cmd
}

/// Moves the calling thread into the namespace at `path`; sockets it creates from then on
/// live there, whichever thread uses them later.
pub fn enter(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Changes only this thread's network namespace.
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {}", path.display()))
}

/// Deletes namespace `name` if it exists (which removes its veths too); errors are
/// ignored, as this is cleanup.
pub fn delete(name: &str) {
    if path(name).exists() {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
