//! The YAML policy: which source prefixes may send on port 25, read from a file, checked
//! with every problem reported at its line and column, and compiled into a `MapImage`.
//!
//! See `policies/example.yaml` for the format.

mod compile;
mod diagnostic;
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
    Action, DEFAULT_EVENTS_PER_SECOND, DEFAULT_PORTS, Events, Group, Interface, Mode, Offenders,
    Policy, RelayLimit, VERSION, XdpMode,
};

/// A valid policy and the warnings it drew.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and checks a policy file; diagnostics name it as `path` is written.
pub fn load(path: &Path) -> Result<Loaded, PolicyErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(source) => parse(&source, &file),
        Err(e) => Err(PolicyErrors(vec![Diagnostic {
            severity: Severity::Error,
            file,
            line: None,
            column: None,
            message: format!("cannot read the policy: {e}"),
            hint: None,
        }])),
    }
}

/// Checks a policy held in memory; `file_name` is what diagnostics call it.
pub fn parse(source: &str, file_name: &str) -> Result<Loaded, PolicyErrors> {
    validate::check(source, file_name)
}
