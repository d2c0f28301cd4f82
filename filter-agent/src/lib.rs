//! filter-agent: keeps an XDP port-25 filter in the kernel in sync with a YAML policy.

pub mod agent;
pub mod capture;
pub mod cli;
pub mod control;
pub mod dataplane;
pub mod defaults;
pub mod drop_in;
pub mod exemptions;
pub mod explain;
pub mod image;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod policy;
pub mod replay;
pub mod rfc3339;
pub mod source;
pub mod state_file;
pub mod subscribers;
pub mod web_config;
