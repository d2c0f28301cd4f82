//! The YAML policy: which source prefixes may send on port 25, read from a file, checked
//! with every problem reported at its line and column, and compiled into a `MapImage`.
//!
//! See `policies/example.yaml` for the format.

mod compile;
mod diagnostic;
mod items;
mod locate;
mod prefix;
mod schema;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use diagnostic::{Diagnostic, PolicyErrors, Severity};
pub use prefix::{PrefixError, parse_prefix};
pub use schema::{
    AttachMode, DEFAULT_EVENTS_PER_SECOND, DEFAULT_PORTS, DEFAULT_PRIORITY, Events, Group,
    Interface, Mode, Offenders, Policy, RadiusAccounting, RadiusClient, RelayLimit, Subscribers,
    VERSION, XdpMode,
};

/// A valid policy and the warnings it drew.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and checks a policy file; diagnostics name it as `path` is written.
pub fn load(path: &Path) -> Result<Loaded, PolicyErrors> {
    parse(&read(path)?, &path.display().to_string())
}

/// [`parse`] for a policy held in memory, each warning handed to `warn`.
pub fn parse_reporting(
    source: &str,
    file_name: &str,
    mut warn: impl FnMut(&Diagnostic),
) -> anyhow::Result<Policy> {
    let loaded = parse(source, file_name)?;
    for warning in &loaded.warnings {
        warn(warning);
    }
    Ok(loaded.policy)
}

/// The text of a policy file; a file that cannot be read is an error located at it.
pub fn read(path: &Path) -> Result<String, PolicyErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![Diagnostic {
            severity: Severity::Error,
            file: path.display().to_string(),
            line: None,
            column: None,
            message: format!("cannot read the policy: {e}"),
            hint: None,
        }])
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a policy held in memory; `file_name` is what diagnostics call it.
pub fn parse(source: &str, file_name: &str) -> Result<Loaded, PolicyErrors> {
    validate::check(source, file_name)
}
