//! filter-agent: keeps an XDP port-25 filter in the kernel in sync with a YAML policy.

pub mod agent;
pub mod capture;
pub mod cli;
pub mod dataplane;
pub mod explain;
pub mod fixtures;
pub mod image;
pub mod model;
pub mod policy;
pub mod replay;
