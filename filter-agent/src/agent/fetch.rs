//! Following a signed policy at a URL (`run --policy-url`): a task off the main loop
//! fetches it every poll (and at once on SIGHUP or `reload`), the blocking HTTP on
//! tokio's blocking threads; a verified text goes through the same validation and
//! hole-free sync as a file reload, as a generation whose origin is `fetch`. Whatever
//! is refused leaves the policy in force untouched, is logged with its reason and counted
//! by outcome. The last good policy and its signature are kept in the state directory.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use log::{debug, error, info};
use tokio::sync::{mpsc, oneshot};

use super::{history::Origin, state::Agent};
use crate::{
    control::protocol::{Applied, How, LastFetch, timestamp},
    source::{
        Outcome,
        cache::{self, Cached},
        fetch::{Fetched, Fetcher, Refused},
        sign::PublicKey,
    },
};

/// Where a fetch's outcome goes: to a `reload` waiting for it, or nowhere (a poll, SIGHUP).
pub type Reply = Option<oneshot::Sender<Result<Applied, String>>>;

/// The URL followed, what the last fetch came to, and the counters.
pub struct FetchState {
    pub url: String,
    pub key: PathBuf,
    pub key_id: String,
    pub poll: Duration,
    pub cache: PathBuf,
    /// The ETag the policy in force came with: sent as If-None-Match.
    pub etag: Option<String>,
    pub last: Option<LastFetch>,
    /// Fetches by outcome, in [`Outcome::ALL`]'s order.
    pub counts: [u64; Outcome::ALL.len()],
    /// Asks the fetch task for a fetch now.
    pub now: Option<mpsc::Sender<Reply>>,
}

impl FetchState {
    pub fn new(url: String, key: PathBuf, key_id: String, poll: Duration, cache: PathBuf) -> Self {
        FetchState {
            url,
            key,
            key_id,
            poll,
            cache,
            etag: None,
            last: None,
            counts: [0; Outcome::ALL.len()],
            now: None,
        }
    }

    /// Counts and remembers one outcome; says whether it is news (not the same as the
    /// last one), so a server that stays down is logged once, not every poll.
    pub fn note(&mut self, outcome: Outcome, message: String) -> bool {
        let index = Outcome::ALL
            .iter()
            .position(|&o| o == outcome)
            .expect("listed");
        self.counts[index] += 1;
        let news = self
            .last
            .as_ref()
            .is_none_or(|l| l.outcome != outcome || l.message != message);
        self.last = Some(LastFetch {
            url: self.url.clone(),
            at: timestamp(SystemTime::now()),
            outcome,
            message,
        });
        news
    }

    pub fn counted(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL.iter().copied().zip(self.counts).collect()
    }
}

/// The cached policy if it is of `url` and its signature verifies with `key`; why not
/// otherwise (logged by the caller).
pub fn usable_cache(
    path: &std::path::Path,
    url: &str,
    key: &PublicKey,
) -> Result<Option<Cached>, String> {
    let Some(cached) = cache::load(path).map_err(|e| format!("{e:#}"))? else {
        return Ok(None);
    };
    if cached.url != url {
        return Err(format!(
            "{} holds the policy of {}, not of {url}",
            path.display(),
            cached.url
        ));
    }
    key.verify(cached.policy.as_bytes(), &cached.signature)
        .map_err(|reason| format!("{}: {reason}", path.display()))?;
    Ok(Some(cached))
}

impl Agent {
    fn fetch_state(&mut self) -> Result<&mut FetchState> {
        match self.state.fetch.as_mut() {
            Some(fetch) => Ok(fetch),
            None => bail!("the agent follows no policy URL"),
        }
    }

    /// Takes one fetch's result: applies a signed policy that differs from the one in
    /// force, keeps it (and its signature) in the cache, counts and logs the outcome.
    pub fn take_fetch(&mut self, result: Result<Fetched, Refused>) -> Result<Applied, String> {
        let url = match self.fetch_state() {
            Ok(fetch) => fetch.url.clone(),
            Err(err) => return Err(err.to_string()),
        };
        let (outcome, message, applied) = match result {
            Ok(Fetched::NotModified) => (
                Outcome::NotModified,
                format!(
                    "not modified: generation {} stays in force",
                    self.state.generation
                ),
                Ok(self.unchanged()),
            ),
            Ok(Fetched::Signed {
                text,
                signature,
                etag,
            }) => self.take_signed(&url, text, signature, etag),
            Err(Refused { outcome, reason }) => (outcome, reason.clone(), Err(reason)),
        };
        let fetch = self.state.fetch.as_mut().expect("checked above");
        let etag = fetch.etag.clone();
        let news = fetch.note(outcome, message.clone());
        let etag = etag.as_deref().unwrap_or("none");
        match (outcome.ok(), news || outcome == Outcome::Applied) {
            (true, true) => info!(
                "policy fetch outcome={} url={url} etag={etag}: {message}",
                outcome.name()
            ),
            (true, false) => debug!(
                "policy fetch outcome={} url={url}: {message}",
                outcome.name()
            ),
            (false, true) => error!(
                "policy fetch refused outcome={} url={url}: {message}; generation {} stays in force",
                outcome.name(),
                self.state.generation
            ),
            (false, false) => debug!(
                "policy fetch refused again outcome={}: {message}",
                outcome.name()
            ),
        }
        applied.map(|mut applied| {
            applied.fetch = self.state.fetch.as_ref().and_then(|f| f.last.clone());
            applied
        })
    }

    /// The policy fetched at start is in force: cached and counted as applied.
    pub fn fetched_at_start(&mut self, etag: Option<String>, signature: String) {
        let Ok(fetch) = self.fetch_state() else {
            return;
        };
        let url = fetch.url.clone();
        let message = format!("generation {} in force", self.state.generation);
        info!(
            "policy fetch outcome=applied url={url} etag={}: {message}",
            etag.as_deref().unwrap_or("none")
        );
        let text = self.state.policy_text.clone();
        self.keep(&url, etag, text, signature);
        if let Some(fetch) = self.state.fetch.as_mut() {
            fetch.note(Outcome::Applied, message);
        }
    }

    /// A verified text: the same as in force, or a change to apply.
    fn take_signed(
        &mut self,
        url: &str,
        text: String,
        signature: String,
        etag: Option<String>,
    ) -> (Outcome, String, Result<Applied, String>) {
        let unchanged = crate::policy::sha256_hex(text.as_bytes()) == self.state.policy_sha256;
        let result = if unchanged {
            Ok(self.unchanged())
        } else {
            let origin = Origin {
                note: Some(format!("fetched from {url}")),
                ..Origin::new(How::Fetch, None)
            };
            self.change_to(text.clone(), None, url, origin)
                .map_err(|e| super::one_line(&format!("{e:#}")))
        };
        match result {
            Ok(applied) => {
                self.keep(url, etag, text, signature);
                let outcome = if unchanged {
                    Outcome::Unchanged
                } else {
                    Outcome::Applied
                };
                let message = format!("generation {} in force", applied.generation);
                self.state.last_reload = super::state::ReloadResult {
                    ok: true,
                    at: SystemTime::now(),
                    message: message.clone(),
                };
                (outcome, message, Ok(applied))
            }
            Err(reason) => {
                self.state.last_reload = super::state::ReloadResult {
                    ok: false,
                    at: SystemTime::now(),
                    message: reason.clone(),
                };
                (Outcome::Invalid, reason.clone(), Err(reason))
            }
        }
    }

    /// Remembers the ETag and caches the text with its signature; a cache that cannot be
    /// written is logged (the policy is in force either way).
    fn keep(&mut self, url: &str, etag: Option<String>, text: String, signature: String) {
        let Some(fetch) = self.state.fetch.as_mut() else {
            return;
        };
        fetch.etag = etag.clone();
        let cached = Cached::new(url, etag, timestamp(SystemTime::now()), text, signature);
        if let Err(err) = cache::save(&fetch.cache, &cached) {
            error!("the policy is in force but could not be cached: {err:#}");
        }
    }

    /// The reply for a fetch that changed nothing.
    fn unchanged(&self) -> Applied {
        Applied {
            policy_file: self.state.policy_file(),
            generation: self.state.generation,
            sha256: self.state.policy_sha256.clone(),
            new_generation: false,
            pending: None,
            settled: None,
            fetch: None,
        }
    }
}

/// The fetch task: at once if `fetch_first`, then every poll (jittered) and whenever
/// asked. The HTTP runs on a blocking thread; only the apply takes the agent's lock.
pub async fn follow(
    agent: Arc<Mutex<Agent>>,
    fetcher: Arc<Fetcher>,
    poll: Duration,
    mut asked: mpsc::Receiver<Reply>,
    fetch_first: bool,
) {
    let mut first = fetch_first;
    loop {
        let reply = if first {
            first = false;
            None
        } else {
            tokio::select! {
                () = tokio::time::sleep(crate::source::jittered(poll)) => None,
                asked = asked.recv() => match asked {
                    Some(reply) => reply,
                    None => return,
                },
            }
        };
        let etag = agent
            .lock()
            .ok()
            .and_then(|a| a.state.fetch.as_ref().and_then(|f| f.etag.clone()));
        let client = fetcher.clone();
        let result = tokio::task::spawn_blocking(move || client.fetch(etag.as_deref()))
            .await
            .unwrap_or_else(|panic| {
                Err(Refused {
                    outcome: Outcome::HttpError,
                    reason: format!("the fetch failed: {panic}"),
                })
            });
        let outcome = match agent.lock() {
            Ok(mut agent) => agent.take_fetch(result),
            Err(_) => Err("the agent's state is poisoned".to_string()),
        };
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
}
