//! What xtask's tasks share with the tests that check their results: building the Debian
//! package (filter-agent's tests install it in a scratch root).

pub mod package;

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `cmd`, failing unless it succeeds; returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `cmd` with the caller's terminal, failing unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
