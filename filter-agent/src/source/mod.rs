//! Where the policy comes from: a local file, or a URL serving a signed policy that every
//! router of a fleet follows ([`fetch`]: http and https, conditional requests, bounded
//! bodies, the signature checked with [`sign`]'s minisign keys), with the last good
//! policy kept in the state directory ([`cache`]) for a start while the server is down.

pub mod cache;
pub mod fetch;
pub mod sign;

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// Where `filter-agent run` takes its policy from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// A file: watched unless `watch` is false, re-read on SIGHUP and `reload`.
    File { path: PathBuf, watch: bool },
    /// A signed policy at a URL, polled.
    Url(UrlSource),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlSource {
    /// The policy; its signature is at [`signature_url`] of it.
    pub url: String,
    /// The minisign public key the policy must be signed with.
    pub key: PathBuf,
    /// How often to ask: each wait is random between 80 % and 100 % of it.
    pub poll: Duration,
    /// The CA certificates (PEM) an https server's certificate must chain to.
    pub ca: PathBuf,
}

impl PolicySource {
    /// The file path or URL, as logs and `status` name it.
    pub fn label(&self) -> String {
        match self {
            PolicySource::File { path, .. } => path.display().to_string(),
            PolicySource::Url(url) => url.url.clone(),
        }
    }
}

/// `--poll`: from 1 second to a day.
pub fn parse_poll(text: &str) -> Result<Duration, String> {
    let poll = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid --poll {text:?}: {e} (e.g. 30s, 5m)"))?;
    if poll < Duration::from_secs(1) || poll > Duration::from_secs(86_400) {
        return Err(format!("--poll {text} is out of range: from 1s to 1d"));
    }
    Ok(poll)
}

/// The next wait: random between 80 % and 100 % of `poll`, so a fleet started together
/// spreads its requests, and no router waits longer than `poll` for a change.
pub fn jittered(poll: Duration) -> Duration {
    poll.mul_f64(0.8 + 0.2 * fastrand::f64())
}

/// Where the signature of the policy at `url` is: `.sig` appended to the path (a query
/// string stays after it).
pub fn signature_url(url: &str) -> String {
    match url.split_once('?') {
        Some((path, query)) => format!("{path}.sig?{query}"),
        None => format!("{url}.sig"),
    }
}

/// What one fetch of the policy came to; `filter_agent_policy_fetch_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A new signed policy is in force.
    Applied,
    /// The server sent the policy in force again (a 200 with the same text).
    Unchanged,
    /// 304 Not Modified to our If-None-Match.
    NotModified,
    /// The signature is missing a key, is damaged, does not match the body, or was made
    /// with another key.
    BadSignature,
    /// Signed, but refused like an invalid file: a validation error, a missing interface.
    Invalid,
    /// The server answered with an error status, or a body over the limit.
    HttpError,
    /// No answer: DNS, connection, TLS or a timeout.
    Unreachable,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Applied,
        Outcome::Unchanged,
        Outcome::NotModified,
        Outcome::BadSignature,
        Outcome::Invalid,
        Outcome::HttpError,
        Outcome::Unreachable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::NotModified => "not-modified",
            Outcome::BadSignature => "bad-signature",
            Outcome::Invalid => "invalid",
            Outcome::HttpError => "http-error",
            Outcome::Unreachable => "unreachable",
        }
    }

    /// Whether the policy in force is the server's (nothing was refused).
    pub fn ok(self) -> bool {
        matches!(
            self,
            Outcome::Applied | Outcome::Unchanged | Outcome::NotModified
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_sits_beside_the_policy_and_the_wait_never_exceeds_the_poll() {
        assert_eq!(
            signature_url("https://p.example/edge.yaml"),
            "https://p.example/edge.yaml.sig"
        );
        assert_eq!(
            signature_url("http://s3.example/b/edge.yaml?versionId=7"),
            "http://s3.example/b/edge.yaml.sig?versionId=7"
        );
        let poll = Duration::from_secs(30);
        for _ in 0..1000 {
            let wait = jittered(poll);
            assert!(wait >= Duration::from_secs(24) && wait <= poll, "{wait:?}");
        }
        assert_eq!(parse_poll("30s"), Ok(poll));
        assert!(parse_poll("0s").unwrap_err().contains("from 1s to 1d"));
        assert!(parse_poll("often").unwrap_err().contains("invalid --poll"));
    }
}
