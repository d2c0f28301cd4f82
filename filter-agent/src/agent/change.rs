//! Changing the policy in force as an operator does: every change is a generation kept in
//! the history; `apply` and `rollback` write the policy file so file and kernel agree,
//! and with `--confirm-within` leave a pending rollback that the agent carries out by
//! itself unless `confirm` comes first.

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use log::{error, info, warn};

use super::{
    history::{self, Origin},
    one_line,
    state::Agent,
};
use crate::{
    control::protocol::{Applied, Confirmed, How, PendingRollback, timestamp},
    drop_in, policy,
    source::PolicySource,
    state_file,
};

/// The mode a policy file gets when `apply` creates it.
const POLICY_FILE_MODE: u32 = 0o644;

impl Agent {
    /// Validates `text` (diagnostics call it `name`) with the prefixes drop-in `drop_in`
    /// laid over it, and applies them. Texts other than those in force become a new
    /// generation in the history.
    pub fn change_to(
        &mut self,
        text: String,
        drop_in: Option<String>,
        name: &str,
        origin: Origin,
    ) -> Result<Applied> {
        let drop_in_name = self.state.drop_in_name();
        let layered = drop_in::parse(
            &text,
            name,
            drop_in.as_deref().map(|d| (d, drop_in_name.as_str())),
        )?;
        for warning in &layered.warnings {
            warn!("{}", one_line(&warning.to_string()));
        }
        let sha256 = policy::sha256_hex(text.as_bytes());
        let drop_in_sha256 = drop_in.as_ref().map(|d| policy::sha256_hex(d.as_bytes()));
        let current = self.state.history.current();
        let new_generation =
            current.is_none_or(|g| g.sha256 != sha256 || g.prefixes_sha256 != drop_in_sha256);
        let generation = if new_generation {
            self.next_generation()
        } else {
            self.state.generation
        };
        let image = layered
            .policy
            .compile_with_ids(&super::state::group_ids(&self.state.applied));
        self.apply_image(layered.policy, image, sha256.clone(), generation)?;
        self.state.policy_text = text;
        self.state.drop_in = layered.drop_in;
        self.state.drop_in_text = drop_in;
        if new_generation {
            self.record(origin);
        }
        Ok(Applied {
            policy_file: self.state.policy_file(),
            generation,
            sha256,
            new_generation,
            pending: None,
            settled: None,
            fetch: None,
        })
    }

    /// The number a new generation gets.
    pub(super) fn next_generation(&self) -> u64 {
        let current = self.state.history.current();
        self.state
            .generation
            .max(current.map_or(0, |g| g.generation))
            + 1
    }

    /// Records the texts in force as their generation; a failure is logged, not undone
    /// (the policy is in force either way).
    pub(super) fn record(&mut self, origin: Origin) {
        let state = &mut self.state;
        match state.history.record(
            &state.policy_text,
            &state.policy_sha256,
            state.drop_in_text.as_deref(),
            origin,
            SystemTime::now(),
        ) {
            Ok(entry) if entry.generation == state.generation => {}
            Ok(entry) => {
                warn!(
                    "generation {} was recorded in the history as {}",
                    state.generation, entry.generation
                );
                state.generation = entry.generation;
            }
            Err(err) => error!(
                "generation {} is in force but could not be recorded in the history: {err:#}",
                state.generation
            ),
        }
    }

    /// `filter-agent apply`: `text` goes to the policy file and into the kernel. With
    /// `confirm_within`, it is rolled back unless confirmed in time; without, it settles a
    /// pending rollback.
    pub fn apply_policy(
        &mut self,
        text: String,
        name: &str,
        confirm_within: Option<&str>,
        who: &str,
    ) -> Result<Applied> {
        // Refused before anything is touched.
        policy::parse(&text, name)?;
        // The prefixes drop-in stays: it is laid over the new file as over the old one.
        let drop_in = self.state.drop_in_text.clone();
        self.replace_policy(
            text,
            drop_in,
            name,
            confirm_within,
            Origin::new(How::Apply, Some(who.to_string())),
        )
    }

    /// `filter-agent rollback`: applies a kept generation again, byte for byte (by default
    /// the one before the generation in force).
    pub fn roll_back(
        &mut self,
        to: Option<u64>,
        confirm_within: Option<&str>,
        who: &str,
    ) -> Result<Applied> {
        let history = &self.state.history;
        let target = match to {
            Some(generation) => generation,
            None => match history.previous() {
                Some(previous) => previous.generation,
                None => bail!("there is no earlier generation to roll back to"),
            },
        };
        let text = history.text(target)?;
        let drop_in = history.prefixes_text(target)?;
        let origin = Origin {
            restores: Some(target),
            ..Origin::new(How::Rollback, Some(who.to_string()))
        };
        let name = format!("generation {target}");
        self.replace_policy(text, drop_in, &name, confirm_within, origin)
    }

    /// Writes the policy file and its prefixes drop-in, then applies them; on failure the
    /// files are put back as they were, and so is the pending rollback.
    fn replace_policy(
        &mut self,
        text: String,
        drop_in: Option<String>,
        name: &str,
        confirm_within: Option<&str>,
        origin: Origin,
    ) -> Result<Applied> {
        self.refuse_under_url(origin.how)?;
        let confirm_within = confirm_within
            .map(|d| history::parse_confirm_within(d).map(|parsed| (d.trim(), parsed)))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let before = self.state.pending.get().cloned();
        let who = origin.who.clone().unwrap_or_default();
        // Persisted before the change: a crash in between leaves a rollback to a policy in
        // force, which is harmless, never an unconfirmed change without one.
        let pending = confirm_within.map(|(text, duration)| PendingRollback {
            generation: 0,
            // Back to the last confirmed generation, however many unconfirmed came since.
            rollback_to: before
                .as_ref()
                .map_or(self.state.generation, |p| p.rollback_to),
            // Rounded up to the whole second the file holds: never early.
            deadline: timestamp(SystemTime::now() + duration + Duration::from_millis(999)),
            confirm_within: text.to_string(),
            requested_by: who.clone(),
        });
        if pending.is_some() {
            self.state.pending.set(pending.clone())?;
        }
        let old_text = self.state.policy_text.clone();
        let old_drop_in = self.state.drop_in_text.clone();
        let applied = self
            .write_policy_files(&text, drop_in.as_deref())
            .and_then(|()| self.change_to(text, drop_in, name, origin));
        let mut applied = match applied {
            Ok(applied) => applied,
            Err(err) => {
                if let Err(restore) = self.write_policy_files(&old_text, old_drop_in.as_deref()) {
                    error!("cannot put the policy files back as they were: {restore:#}");
                }
                if pending.is_some()
                    && let Err(restore) = self.state.pending.set(before)
                {
                    error!("cannot restore the pending rollback: {restore:#}");
                }
                return Err(err);
            }
        };
        match pending {
            Some(mut pending) => {
                pending.generation = applied.generation;
                self.state.pending.set(Some(pending.clone()))?;
                info!(
                    "generation {} must be confirmed within {} (by {}): otherwise generation {} is applied again",
                    applied.generation,
                    pending.confirm_within,
                    pending.deadline,
                    pending.rollback_to
                );
                applied.pending = Some(pending);
            }
            None if before.is_some() => {
                self.state.pending.set(None)?;
                info!(
                    "generation {} by {who} settles the pending rollback",
                    applied.generation
                );
                applied.settled = before;
            }
            None => {}
        }
        Ok(applied)
    }

    /// `apply`, `rollback` and `prefixes` make no sense while the policy comes from a URL:
    /// the next fetch would undo them, or a 304 would keep them unseen by the fleet's
    /// source.
    pub(super) fn refuse_under_url(&self, how: How) -> Result<()> {
        if let PolicySource::Url(url) = &self.state.source {
            bail!(
                "the policy comes from {} (run --policy-url): `{}` would be undone by the next fetch; publish the policy you want there, signed (`filter-agent sign`); the texts of earlier generations are in the state directory's history/N.yaml",
                url.url,
                how.name()
            );
        }
        Ok(())
    }

    /// Replaces the policy file whole, keeping its mode, and its prefixes drop-in (`None`:
    /// removes it).
    fn write_policy_files(&self, text: &str, drop_in: Option<&str>) -> Result<()> {
        let PolicySource::File { path, .. } = &self.state.source else {
            bail!("the policy comes from a URL; there is no policy file to write");
        };
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(POLICY_FILE_MODE);
        state_file::write_atomically_with_mode(path, text.as_bytes(), mode, "the policy file")?;
        self.write_drop_in(drop_in)
    }

    /// Writes the prefixes drop-in beside the policy file, with the policy file's mode;
    /// `None` removes it.
    pub(super) fn write_drop_in(&self, text: Option<&str>) -> Result<()> {
        let PolicySource::File { path, .. } = &self.state.source else {
            bail!("the policy comes from a URL; there is no prefixes drop-in to write");
        };
        let beside = drop_in::path_beside(path);
        match text {
            Some(text) => {
                let mode = std::fs::metadata(path)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(POLICY_FILE_MODE);
                state_file::write_atomically_with_mode(
                    &beside,
                    text.as_bytes(),
                    mode,
                    "the prefixes drop-in",
                )
            }
            None => state_file::remove(&beside, "the prefixes drop-in"),
        }
    }

    /// `filter-agent confirm`: the pending rollback is dropped.
    pub fn confirm(&mut self, who: &str) -> Result<Confirmed> {
        let Some(pending) = self.state.pending.get().cloned() else {
            bail!(
                "nothing to confirm: no change is waiting for confirmation (generation {} is in force)",
                self.state.generation
            );
        };
        self.state.pending.set(None)?;
        info!(
            "generation {} confirmed by {who}; the rollback to generation {} is cancelled",
            pending.generation, pending.rollback_to
        );
        Ok(Confirmed {
            generation: self.state.generation,
            cancelled: pending,
        })
    }

    /// Carries out a pending rollback whose deadline has come (checked every second).
    pub fn roll_back_if_unconfirmed(&mut self) {
        let Some(pending) = self.state.pending.due(SystemTime::now()).cloned() else {
            return;
        };
        let note = format!(
            "automatic: generation {} (by {}) was not confirmed within {}",
            pending.generation, pending.requested_by, pending.confirm_within
        );
        warn!(
            "rollback: {note}; applying generation {} again",
            pending.rollback_to
        );
        let history = &self.state.history;
        let result = history
            .text(pending.rollback_to)
            .and_then(|text| Ok((text, history.prefixes_text(pending.rollback_to)?)))
            .and_then(|(text, drop_in)| {
                let origin = Origin {
                    restores: Some(pending.rollback_to),
                    note: Some(note.clone()),
                    ..Origin::new(How::Rollback, Some("agent".into()))
                };
                let name = format!("generation {}", pending.rollback_to);
                self.write_policy_files(&text, drop_in.as_deref())?;
                self.change_to(text, drop_in, &name, origin)
            });
        match result {
            Ok(applied) => {
                self.state.automatic_rollbacks += 1;
                warn!(
                    "rollback done: generation {} in force again as generation {}",
                    pending.rollback_to, applied.generation
                );
            }
            // Not retried every second: the unconfirmed policy stays, and says so.
            Err(err) => error!(
                "rollback to generation {} failed, generation {} stays in force: {err:#}",
                pending.rollback_to, self.state.generation
            ),
        }
        if let Err(err) = self.state.pending.set(None) {
            error!("cannot clear the pending rollback: {err:#}");
        }
    }

    /// When the pending rollback is due, for logs at start.
    pub fn pending_deadline(&self) -> Option<(PendingRollback, Duration)> {
        let pending = self.state.pending.get()?.clone();
        let left = history::deadline(&pending)
            .and_then(|d| d.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        Some((pending, left))
    }
}
