//! The last good policy fetched from a URL, with its signature and ETag, kept in the
//! state directory in one file (written crash-safe, see [`state_file`]): a policy and a
//! signature that belong together, or the earlier pair, never one of each. An agent that
//! starts while the server cannot be reached enforces it, after checking the signature
//! again with the key it has now.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::state_file;

/// The only format this agent reads and writes.
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    pub version: u32,
    /// Where it was fetched from: a cache of another URL is not used.
    pub url: String,
    pub etag: Option<String>,
    pub fetched_at: String,
    pub sha256: String,
    /// The policy text and its `.sig`, byte for byte.
    pub policy: String,
    pub signature: String,
}

impl Cached {
    pub fn new(
        url: &str,
        etag: Option<String>,
        fetched_at: String,
        policy: String,
        signature: String,
    ) -> Cached {
        Cached {
            version: VERSION,
            url: url.to_string(),
            etag,
            fetched_at,
            sha256: crate::policy::sha256_hex(policy.as_bytes()),
            policy,
            signature,
        }
    }
}

/// The cached policy, if there is one.
pub fn load(path: &Path) -> Result<Option<Cached>> {
    let Some(text) = state_file::read(path, "the cached policy")? else {
        return Ok(None);
    };
    let cached: Cached = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a cached policy", path.display()))?;
    if cached.version != VERSION {
        bail!(
            "{}: cached policy version {} is not supported (this agent knows {VERSION})",
            path.display(),
            cached.version
        );
    }
    Ok(Some(cached))
}

pub fn save(path: &Path, cached: &Cached) -> Result<()> {
    state_file::write_atomically(
        path,
        &serde_json::to_string_pretty(cached)?,
        "the cached policy",
    )
}
