//! `ip -batch`, for the test lab and the live benchmark's namespaces.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

/// Runs `ip [-n NS] -batch -` with `commands` (one per line) on stdin.
pub fn batch(netns: Option<&str>, commands: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {}-batch failed: {}\ncommands:\n{commands}",
            netns.map(|ns| format!("-n {ns} ")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
