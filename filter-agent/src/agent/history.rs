//! The policy history: the last [`HISTORY_KEPT`] generations applied, each with its text
//! byte for byte, so any of them can be applied again; and the pending rollback of an
//! unconfirmed change. Both live in the state directory and are written crash-safe
//! (see [`state_file`]), so they survive a restart and a kill -9.
//!
//! Layout: `STATE_DIR/history/index.json` (the generations, oldest first) and
//! `STATE_DIR/history/N.yaml` (generation N's text); `STATE_DIR/pending-rollback.json`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    control::protocol::{Generation, How, PendingRollback, timestamp},
    policy, state_file,
};

/// The history's directory and the pending rollback's file, inside the state directory.
pub const HISTORY_DIR: &str = "history";
pub const PENDING_FILE: &str = "pending-rollback.json";
/// Generations kept; older ones are forgotten.
pub const HISTORY_KEPT: usize = 50;
/// The only history format this agent reads and writes.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Index {
    version: u32,
    generations: Vec<Generation>,
}

/// How a change came, and who asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub how: How,
    pub who: Option<String>,
    pub restores: Option<u64>,
    pub note: Option<String>,
}

impl Origin {
    pub fn new(how: How, who: Option<String>) -> Origin {
        Origin {
            how,
            who,
            restores: None,
            note: None,
        }
    }
}

/// The generations kept in `dir`.
#[derive(Debug)]
pub struct PolicyHistory {
    dir: PathBuf,
    generations: Vec<Generation>,
}

impl PolicyHistory {
    /// Reads the index in `dir`; none yet is an empty history.
    pub fn load(dir: &Path) -> Result<PolicyHistory> {
        let path = dir.join("index.json");
        let generations = match fs::read(&path) {
            Ok(bytes) => {
                let index: Index = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: invalid policy history index", path.display()))?;
                if index.version != VERSION {
                    bail!(
                        "{}: policy history version {} is not supported (this agent knows {VERSION})",
                        path.display(),
                        index.version
                    );
                }
                index.generations
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        Ok(PolicyHistory {
            dir: dir.to_path_buf(),
            generations,
        })
    }

    pub fn generations(&self) -> &[Generation] {
        &self.generations
    }

    /// The generation recorded last: the one in force.
    pub fn current(&self) -> Option<&Generation> {
        self.generations.last()
    }

    pub fn get(&self, generation: u64) -> Option<&Generation> {
        self.generations.iter().find(|g| g.generation == generation)
    }

    /// The generation recorded before the one in force: what `rollback` goes back to.
    pub fn previous(&self) -> Option<&Generation> {
        self.generations.iter().rev().nth(1)
    }

    fn text_path(&self, generation: u64) -> PathBuf {
        text_path(&self.dir, generation)
    }

    /// The text of a kept generation, checked against its SHA-256.
    pub fn text(&self, generation: u64) -> Result<String> {
        let Some(entry) = self.get(generation) else {
            let kept = match (self.generations.first(), self.generations.last()) {
                (Some(first), Some(last)) => {
                    format!(
                        "generations {} to {} are kept",
                        first.generation, last.generation
                    )
                }
                _ => "no generation is kept yet".to_string(),
            };
            bail!("no generation {generation} in the history ({kept})");
        };
        let path = self.text_path(generation);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read generation {generation} ({})", path.display()))?;
        let sha256 = policy::sha256_hex(text.as_bytes());
        if sha256 != entry.sha256 {
            bail!(
                "generation {generation} is damaged: {} has sha256 {sha256}, the history says {}",
                path.display(),
                entry.sha256
            );
        }
        Ok(text)
    }

    /// The text of a kept generation's prefixes drop-in, checked against its SHA-256;
    /// `None` when it had none.
    pub fn prefixes_text(&self, generation: u64) -> Result<Option<String>> {
        let Some(sha256) = self
            .get(generation)
            .and_then(|g| g.prefixes_sha256.as_deref())
        else {
            return Ok(None);
        };
        let path = prefixes_path(&self.dir, generation);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the prefixes of generation {generation} ({})",
                path.display()
            )
        })?;
        let found = policy::sha256_hex(text.as_bytes());
        if found != sha256 {
            bail!(
                "the prefixes of generation {generation} are damaged: {} has sha256 {found}, the history says {sha256}",
                path.display()
            );
        }
        Ok(Some(text))
    }

    /// Records `text` (whose SHA-256 is `sha256`) and the prefixes drop-in laid over it as
    /// the next generation: the texts first (synced), then the index (atomically, which
    /// makes them part of the history), then the texts of generations no longer kept are
    /// removed. A policy text equal to the one in force is
    /// linked, not copied: a prefix change in a large policy writes only the drop-in.
    pub fn record(
        &mut self,
        text: &str,
        sha256: &str,
        prefixes: Option<&str>,
        origin: Origin,
        at: SystemTime,
    ) -> Result<Generation> {
        let entry = Generation {
            generation: self.current().map_or(1, |g| g.generation + 1),
            sha256: sha256.to_string(),
            bytes: text.len() as u64,
            applied_at: timestamp(at),
            how: origin.how,
            who: origin.who,
            restores: origin.restores,
            note: origin.note,
            prefixes_sha256: prefixes.map(|p| policy::sha256_hex(p.as_bytes())),
        };
        // The texts are named by nothing until the index is written after them.
        let path = self.text_path(entry.generation);
        let linked = self
            .current()
            .filter(|current| current.sha256 == sha256)
            .is_some_and(|current| {
                // One left behind by a crash is replaced.
                let _ = fs::remove_file(&path);
                fs::hard_link(self.text_path(current.generation), &path).is_ok()
            });
        if !linked {
            state_file::write_unreferenced(&path, text, "the policy history")?;
        }
        if let Some(prefixes) = prefixes {
            state_file::write_unreferenced(
                &prefixes_path(&self.dir, entry.generation),
                prefixes,
                "the policy history",
            )?;
        }
        let mut generations = self.generations.clone();
        generations.push(entry.clone());
        let forgotten = generations.len().saturating_sub(HISTORY_KEPT);
        let dropped: Vec<Generation> = generations.drain(..forgotten).collect();
        let index = Index {
            version: VERSION,
            generations,
        };
        state_file::write_atomically(
            &self.dir.join("index.json"),
            &serde_json::to_string_pretty(&index)?,
            "the policy history index",
        )?;
        self.generations = index.generations;
        for old in dropped {
            // Unreferenced now; one left behind by a crash is overwritten if ever reused.
            let _ = fs::remove_file(self.text_path(old.generation));
            let _ = fs::remove_file(prefixes_path(&self.dir, old.generation));
        }
        Ok(entry)
    }
}

/// The pending rollback's file: present while a change awaits `confirm`.
#[derive(Debug)]
pub struct PendingStore {
    path: PathBuf,
    pending: Option<PendingRollback>,
}

impl PendingStore {
    pub fn load(path: &Path) -> Result<PendingStore> {
        let pending = match fs::read(path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: invalid pending rollback", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(PendingStore {
            path: path.to_path_buf(),
            pending,
        })
    }

    pub fn get(&self) -> Option<&PendingRollback> {
        self.pending.as_ref()
    }

    /// Persists `pending` (or its absence) before it counts.
    pub fn set(&mut self, pending: Option<PendingRollback>) -> Result<()> {
        match &pending {
            Some(p) => state_file::write_atomically(
                &self.path,
                &serde_json::to_string_pretty(p)?,
                "the pending rollback",
            )?,
            None => state_file::remove(&self.path, "the pending rollback")?,
        }
        self.pending = pending;
        Ok(())
    }

    /// The pending rollback if its deadline has come.
    pub fn due(&self, now: SystemTime) -> Option<&PendingRollback> {
        self.pending
            .as_ref()
            .filter(|p| deadline(p).is_none_or(|d| d <= now))
    }
}

/// Where a generation's text is kept in the history directory `dir`.
pub fn text_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation}.yaml"))
}

/// Where the prefixes drop-in of a generation is kept, if it had one.
pub fn prefixes_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation}.prefixes.yaml"))
}

/// When a pending rollback is carried out; `None` for an unreadable deadline (due now:
/// fail safe, back to the confirmed policy).
pub fn deadline(pending: &PendingRollback) -> Option<SystemTime> {
    humantime::parse_rfc3339(&pending.deadline).ok()
}

/// `--confirm-within`: a duration from 10 s to a day, e.g. `5m`.
pub fn parse_confirm_within(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid --confirm-within {text:?}: {e} (e.g. 90s, 5m, 1h)"))?;
    if duration < Duration::from_secs(10) || duration > Duration::from_secs(86_400) {
        return Err(format!(
            "--confirm-within {text} is out of range: from 10s to 1d"
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn generations_are_numbered_kept_byte_for_byte_and_the_oldest_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = PolicyHistory::load(dir.path()).unwrap();
        assert!(history.current().is_none());
        for n in 1..=HISTORY_KEPT as u64 + 3 {
            let text = format!("version: 1 # {n}\r\n\u{e9}\n");
            let who = Some("alice".to_string());
            let sha256 = policy::sha256_hex(text.as_bytes());
            let entry = history
                .record(
                    &text,
                    &sha256,
                    None,
                    Origin::new(How::Apply, who),
                    at(1_800_000_000 + n),
                )
                .unwrap();
            assert_eq!(entry.generation, n);
            assert_eq!(entry.bytes, text.len() as u64);
        }
        let reloaded = PolicyHistory::load(dir.path()).unwrap();
        let numbers: Vec<u64> = reloaded
            .generations()
            .iter()
            .map(|g| g.generation)
            .collect();
        assert_eq!(numbers, (4..=HISTORY_KEPT as u64 + 3).collect::<Vec<_>>());
        assert_eq!(reloaded.text(10).unwrap(), "version: 1 # 10\r\n\u{e9}\n");
        assert_eq!(
            reloaded.previous().unwrap().generation,
            HISTORY_KEPT as u64 + 2
        );
        assert_eq!(
            reloaded.current().unwrap().applied_at,
            "2027-01-15T08:00:53Z"
        );
        assert!(!dir.path().join("3.yaml").exists());
        assert_eq!(
            reloaded.text(3).unwrap_err().to_string(),
            "no generation 3 in the history (generations 4 to 53 are kept)"
        );
    }

    #[test]
    fn a_damaged_text_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = PolicyHistory::load(dir.path()).unwrap();
        let text = "version: 1\n";
        let sha256 = policy::sha256_hex(text.as_bytes());
        history
            .record(
                text,
                &sha256,
                Some("version: 1\n"),
                Origin::new(How::Start, None),
                at(0),
            )
            .unwrap();
        fs::write(dir.path().join("1.yaml"), "version: 2\n").unwrap();
        let error = history.text(1).unwrap_err().to_string();
        assert!(error.starts_with("generation 1 is damaged"), "{error}");
        fs::write(dir.path().join("1.prefixes.yaml"), "version: 2\n").unwrap();
        let error = history.prefixes_text(1).unwrap_err().to_string();
        assert!(
            error.starts_with("the prefixes of generation 1 are damaged"),
            "{error}"
        );
    }

    #[test]
    fn a_prefix_change_links_the_policy_text_and_keeps_its_drop_in() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut history = PolicyHistory::load(dir.path()).unwrap();
        let text = "version: 1\n# a large policy\n";
        let sha256 = policy::sha256_hex(text.as_bytes());
        let drop_in = "version: 1\nremove: [10.0.0.0/8]\n";
        history
            .record(text, &sha256, None, Origin::new(How::Start, None), at(0))
            .unwrap();
        let second = history
            .record(
                text,
                &sha256,
                Some(drop_in),
                Origin::new(How::PrefixesAdd, None),
                at(1),
            )
            .unwrap();
        assert_eq!(
            second.prefixes_sha256,
            Some(policy::sha256_hex(drop_in.as_bytes()))
        );
        let inode = |n: u64| fs::metadata(text_path(dir.path(), n)).unwrap().ino();
        assert_eq!(inode(1), inode(2), "the policy text is linked, not copied");
        let reloaded = PolicyHistory::load(dir.path()).unwrap();
        assert_eq!(reloaded.text(2).unwrap(), text);
        assert_eq!(reloaded.prefixes_text(2).unwrap().as_deref(), Some(drop_in));
        assert_eq!(reloaded.prefixes_text(1).unwrap(), None);
    }

    #[test]
    fn a_pending_rollback_survives_a_reload_and_is_due_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending-rollback.json");
        let mut store = PendingStore::load(&path).unwrap();
        assert!(store.get().is_none());
        let pending = PendingRollback {
            generation: 4,
            rollback_to: 3,
            deadline: timestamp(at(1_000)),
            confirm_within: "5m".into(),
            requested_by: "alice".into(),
        };
        store.set(Some(pending.clone())).unwrap();
        let store = PendingStore::load(&path).unwrap();
        assert_eq!(store.get(), Some(&pending));
        assert_eq!(store.due(at(999)), None);
        assert_eq!(store.due(at(1_000)), Some(&pending));
        let mut store = store;
        store.set(None).unwrap();
        assert!(!path.exists());
        assert!(PendingStore::load(&path).unwrap().get().is_none());
    }

    #[test]
    fn confirm_within_takes_a_bounded_duration() {
        assert_eq!(parse_confirm_within("5m"), Ok(Duration::from_secs(300)));
        assert!(
            parse_confirm_within("1s")
                .unwrap_err()
                .contains("from 10s to 1d")
        );
        assert!(
            parse_confirm_within("soon")
                .unwrap_err()
                .contains("invalid")
        );
    }
}
