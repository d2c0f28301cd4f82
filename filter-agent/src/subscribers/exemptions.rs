//! Exemptions granted to a subscriber by name (`filter-agent exemptions add --subscriber`):
//! in force on whatever addresses the subscriber's sessions hold, kept in
//! `STATE_DIR/subscriber-exemptions.yaml` with who asked, why and until when.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    exemptions::{ExemptionError, Terms, time},
    state_file,
};

const VERSION: u32 = 1;
const HEADER: &str =
    "# Exemptions granted with `filter-agent exemptions add --subscriber`; managed by the agent.\n";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberExemption {
    pub subscriber: String,
    pub reason: String,
    pub added_by: String,
    #[serde(with = "crate::rfc3339")]
    pub added_at: SystemTime,
    #[serde(with = "crate::rfc3339::option", default)]
    pub expires_at: Option<SystemTime>,
}

impl SubscriberExemption {
    pub fn new(subscriber: String, terms: Terms) -> SubscriberExemption {
        SubscriberExemption {
            subscriber,
            reason: terms.reason,
            added_by: terms.added_by,
            added_at: terms.added_at,
            expires_at: terms.expires_at,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    exemptions: Vec<SubscriberExemption>,
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberExemptions {
    path: PathBuf,
    items: BTreeMap<String, SubscriberExemption>,
}

impl SubscriberExemptions {
    /// Reads the file; a missing file is none granted.
    pub fn load(path: &Path) -> anyhow::Result<SubscriberExemptions> {
        let mut store = SubscriberExemptions {
            path: path.to_path_buf(),
            items: BTreeMap::new(),
        };
        let what = "the subscriber exemptions file";
        let Some(text) = state_file::read(path, what)? else {
            return Ok(store);
        };
        let corrupt =
            |e: serde_saphyr::Error| anyhow::anyhow!("{}: invalid {what}: {e}", path.display());
        let probe: VersionProbe = state_file::from_yaml(&text).map_err(corrupt)?;
        if probe.version != VERSION {
            anyhow::bail!(
                "{}: subscriber exemptions file version {} is not supported (this agent knows version {VERSION})",
                path.display(),
                probe.version
            );
        }
        let file: StateFile = state_file::from_yaml(&text).map_err(corrupt)?;
        for exemption in file.exemptions {
            let name = exemption.subscriber.clone();
            if store.items.insert(name.clone(), exemption).is_some() {
                anyhow::bail!(
                    "{}: invalid {what}: {name:?} is listed twice",
                    path.display()
                );
            }
        }
        Ok(store)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let file = StateFile {
            version: VERSION,
            exemptions: self.items.values().cloned().collect(),
        };
        let text = format!("{HEADER}{}", state_file::to_yaml(&file)?);
        state_file::write_atomically(&self.path, &text, "the subscriber exemptions file")
    }

    pub fn insert(&mut self, exemption: SubscriberExemption) -> Result<(), ExemptionError> {
        if let Some(existing) = self.items.get(&exemption.subscriber) {
            return Err(ExemptionError(format!(
                "subscriber {} is already exempt (reason {:?}, added by {} at {}{}); remove it first to change it",
                existing.subscriber,
                existing.reason,
                existing.added_by,
                time(existing.added_at),
                match existing.expires_at {
                    Some(at) => format!(", expires {}", time(at)),
                    None => String::new(),
                },
            )));
        }
        self.items.insert(exemption.subscriber.clone(), exemption);
        Ok(())
    }

    pub fn remove(&mut self, subscriber: &str) -> Result<SubscriberExemption, ExemptionError> {
        self.items
            .remove(subscriber)
            .ok_or_else(|| ExemptionError(format!("subscriber {subscriber} has no exemption")))
    }

    /// Removes and returns the exemptions whose expiry is at or before `now`.
    pub fn take_expired(&mut self, now: SystemTime) -> Vec<SubscriberExemption> {
        let expired: Vec<String> = self
            .items
            .values()
            .filter(|e| e.expires_at.is_some_and(|at| at <= now))
            .map(|e| e.subscriber.clone())
            .collect();
        expired
            .iter()
            .filter_map(|name| self.items.remove(name))
            .collect()
    }

    pub fn get(&self, subscriber: &str) -> Option<&SubscriberExemption> {
        self.items.get(subscriber)
    }

    /// By subscriber name.
    pub fn iter(&self) -> impl Iterator<Item = &SubscriberExemption> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exemptions::parse_terms;

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-11-28T10:00:00.5Z").unwrap()
    }

    fn grant(name: &str, expires: Option<&str>) -> SubscriberExemption {
        SubscriberExemption::new(
            name.into(),
            parse_terms("ticket 4711: own MTA", expires, None, "root", now()).unwrap(),
        )
    }

    #[test]
    fn granted_kept_refused_twice_expired_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subscriber-exemptions.yaml");
        let mut store = SubscriberExemptions::load(&path).unwrap();
        assert!(store.is_empty());
        store.insert(grant("alice", None)).unwrap();
        store.insert(grant("bob", Some("1h"))).unwrap();
        assert!(
            store
                .insert(grant("alice", None))
                .unwrap_err()
                .0
                .starts_with("subscriber alice is already exempt (reason \"ticket 4711: own MTA\", added by root at 2026-11-28T10:00:00Z)")
        );
        store.save().unwrap();
        let loaded = SubscriberExemptions::load(&path).unwrap();
        assert_eq!(loaded, store);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(HEADER) && text.contains("subscriber: alice\n"),
            "{text}"
        );

        let expired = store.take_expired(now() + Duration::from_secs(3601));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].subscriber, "bob");
        assert_eq!(store.remove("alice").unwrap().subscriber, "alice");
        assert_eq!(
            store.remove("alice").unwrap_err().0,
            "subscriber alice has no exemption"
        );

        std::fs::write(&path, "version: 1\nexemptions:\n  - {subscriber: a, reason: r, added_by: root, added_at: 2026-11-28T10:00:00Z}\n  - {subscriber: a, reason: r, added_by: root, added_at: 2026-11-28T10:00:00Z}\n").unwrap();
        let e = format!("{:#}", SubscriberExemptions::load(&path).unwrap_err());
        assert!(e.contains("\"a\" is listed twice"), "{e}");
    }
}
