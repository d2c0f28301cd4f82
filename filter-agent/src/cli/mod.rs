//! The command line: `args` defines it (clap), `run` dispatches, `render` shows the
//! agent's replies, `manpages` writes man pages and completions.

pub mod args;
mod change;
pub mod manpages;
mod plan;
pub mod render;
mod run;

pub use run::main;
