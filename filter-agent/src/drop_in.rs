//! The prefixes drop-in: the prefix changes made with `filter-agent prefixes add` and
//! `prefixes remove` (an IPAM's), kept beside the policy file in `NAME.prefixes.yaml` and
//! laid over it wherever a policy file is loaded: by the agent, `check`, `plan`,
//! `explain` and `replay`. The policy file itself is never written by these commands, so
//! a file kept in git stays byte for byte as committed, and deploying it again (config
//! management, a reload) leaves the IPAM's prefixes in force.
//!
//! ```yaml
//! version: 1
//! add:                   # prefixes added to a group of the policy (or moved into it)
//!   residential: [198.18.0.0/24]
//! remove: [100.64.5.0/24]  # prefixes of the policy file taken out
//! ```
//!
//! Each prefix the drop-in names is decided by it alone: it is taken out of whatever
//! group the policy file lists it in, and put into the group `add` names (or into none,
//! for `remove`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    policy::{self, Diagnostic, Policy, PolicyErrors, Severity},
    state_file,
};

/// The only drop-in format this agent reads and writes.
const VERSION: u32 = 1;

/// Where the drop-in of the policy file `policy` lives: beside it, `policy.yaml` ->
/// `policy.prefixes.yaml`.
pub fn path_beside(policy: &Path) -> PathBuf {
    let name = policy
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
        .unwrap_or(&name);
    policy.with_file_name(format!("{stem}.prefixes.yaml"))
}

/// What the drop-in says about one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// The group it is in; `None`: removed.
    group: Option<String>,
    /// The group the policy file lists it in, learnt when the drop-in was laid over it.
    file: Option<String>,
}

/// The prefix changes in force on top of the policy file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropIn {
    entries: BTreeMap<IpNet, Entry>,
}

/// The file as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    add: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    remove: Vec<String>,
}

/// A change `filter-agent prefixes` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Add { group: String, prefixes: Vec<IpNet> },
    Remove { prefixes: Vec<IpNet> },
}

/// One prefix's move between groups (`None`: in no group).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub prefix: IpNet,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A change refused, with every reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub Vec<String>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))?;
        f.write_str("\nnothing changed")
    }
}

impl std::error::Error for Refused {}

/// A prefix as the command line and the drop-in write it: strictly (host bits clear).
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    policy::parse_prefix(text).map_err(|e| e.sentence(text))
}

impl DropIn {
    /// Reads a drop-in; `name` is what diagnostics call it.
    pub fn parse(text: &str, name: &str) -> Result<DropIn, PolicyErrors> {
        let error = |line: Option<usize>, message: String, hint: Option<&str>| Diagnostic {
            severity: Severity::Error,
            file: name.to_string(),
            line,
            column: None,
            message,
            hint: hint.map(str::to_string),
        };
        let file: File = state_file::from_yaml(text).map_err(|e| {
            PolicyErrors(vec![error(
                None,
                format!("invalid prefixes drop-in: {e}"),
                Some("write it with `filter-agent prefixes add` and `remove`"),
            )])
        })?;
        if file.version != VERSION {
            return Err(PolicyErrors(vec![error(
                None,
                format!(
                    "prefixes drop-in version {} is not supported (this agent knows {VERSION})",
                    file.version
                ),
                None,
            )]));
        }
        // The line a prefix is written on, for the editor's sake.
        let line_of = |prefix: &str| text.lines().position(|l| l.contains(prefix)).map(|n| n + 1);
        let mut errors = Vec::new();
        let mut entries = BTreeMap::new();
        let listed = file
            .add
            .iter()
            .flat_map(|(group, prefixes)| prefixes.iter().map(move |p| (p, Some(group))))
            .chain(file.remove.iter().map(|p| (p, None)));
        for (text, group) in listed {
            let prefix = match parse_prefix(text) {
                Ok(prefix) => prefix,
                Err(message) => {
                    errors.push(error(line_of(text), message, None));
                    continue;
                }
            };
            let entry = Entry {
                group: group.cloned(),
                file: None,
            };
            if entries.insert(prefix, entry).is_some() {
                errors.push(error(
                    line_of(text),
                    format!("prefix {prefix} is named twice"),
                    Some("the drop-in says once what becomes of a prefix"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(DropIn { entries })
        } else {
            Err(PolicyErrors(errors))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Prefixes added to (or moved into) a group, and prefixes taken out.
    pub fn counts(&self) -> (usize, usize) {
        let added = self.entries.values().filter(|e| e.group.is_some()).count();
        (added, self.entries.len() - added)
    }

    /// The file's text; `None` when there is nothing to keep (the file is removed).
    pub fn to_text(&self, policy_file: &str) -> anyhow::Result<Option<String>> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut file = File {
            version: VERSION,
            add: BTreeMap::new(),
            remove: Vec::new(),
        };
        for (prefix, entry) in &self.entries {
            match &entry.group {
                Some(group) => file
                    .add
                    .entry(group.clone())
                    .or_default()
                    .push(prefix.to_string()),
                None => file.remove.push(prefix.to_string()),
            }
        }
        Ok(Some(format!(
            "# Prefix changes laid over {policy_file}, made with `filter-agent prefixes add` and\n\
             # `filter-agent prefixes remove`. Managed by the agent; after editing it by hand, run\n\
             # `filter-agent reload`.\n{}",
            state_file::to_yaml(&file)?
        )))
    }

    /// Lays the drop-in over `policy` (the policy file, named `name`): the one place where
    /// the two are merged. Each prefix it names leaves the group the file lists it in and
    /// joins the group it names. A group the policy does not have is an error; an entry
    /// that changes nothing is a warning.
    pub fn lay_over(
        &mut self,
        policy: &mut Policy,
        name: &str,
    ) -> Result<Vec<Diagnostic>, PolicyErrors> {
        if self.entries.is_empty() {
            return Ok(Vec::new());
        }
        for entry in self.entries.values_mut() {
            entry.file = None;
        }
        for group in &mut policy.groups {
            let entries = &mut self.entries;
            group
                .prefixes
                .retain(|prefix| match entries.get_mut(prefix) {
                    Some(entry) => {
                        entry.file = Some(group.name.clone());
                        false
                    }
                    None => true,
                });
        }
        let diagnostic = |severity, message: String, hint: Option<String>| Diagnostic {
            severity,
            file: name.to_string(),
            line: None,
            column: None,
            message,
            hint,
        };
        let mut diagnostics = Vec::new();
        for (prefix, entry) in &self.entries {
            match (&entry.group, &entry.file) {
                (Some(group), file) => {
                    match policy.groups.iter_mut().find(|g| &g.name == group) {
                        Some(target) => target.prefixes.push(*prefix),
                        None => diagnostics.push(diagnostic(
                            Severity::Error,
                            format!("prefix {prefix} is added to group {group:?}, which the policy does not have"),
                            Some(format!("add the group to the policy, or `filter-agent prefixes remove {prefix}`")),
                        )),
                    }
                    if file.as_ref() == Some(group) {
                        diagnostics.push(diagnostic(
                            Severity::Warning,
                            format!("prefix {prefix} is added to group {group}, where the policy file lists it too"),
                            Some("the drop-in's entry can go: delete its line, then `filter-agent reload`".into()),
                        ));
                    }
                }
                (None, None) => diagnostics.push(diagnostic(
                    Severity::Warning,
                    format!("prefix {prefix} is removed, but the policy file does not list it"),
                    Some("should the file list it again, the drop-in takes it out again".into()),
                )),
                (None, Some(_)) => {}
            }
        }
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            Err(PolicyErrors(diagnostics))
        } else {
            Ok(diagnostics)
        }
    }

    /// The drop-in after `change`, checked against the policy in force (`policy`, with
    /// this drop-in laid over it; `group_of` says which group a prefix is in now), and
    /// each prefix's move. Refused, with every reason, as the policy loader refuses: a
    /// group the policy does not have, a prefix named twice, one already in a group (a
    /// prefix belongs to one group) or, to remove, in none.
    pub fn changed(
        &self,
        policy: &Policy,
        group_of: impl Fn(IpNet) -> Option<String>,
        change: &Change,
    ) -> Result<(DropIn, Vec<Moved>), Refused> {
        let (group, prefixes) = match change {
            Change::Add { group, prefixes } => (Some(group), prefixes),
            Change::Remove { prefixes } => (None, prefixes),
        };
        let mut reasons = Vec::new();
        if let Some(group) = group
            && !policy.groups.iter().any(|g| &g.name == group)
        {
            let known: Vec<&str> = policy.groups.iter().map(|g| g.name.as_str()).collect();
            reasons.push(format!(
                "the policy has no group {group:?} (its groups: {})",
                known.join(", ")
            ));
        }
        if prefixes.is_empty() {
            reasons.push("no prefix given".to_string());
        }
        let mut next = self.clone();
        let mut moves = Vec::new();
        let mut seen = BTreeSet::new();
        for &prefix in prefixes {
            if !seen.insert(prefix) {
                reasons.push(format!("prefix {prefix} is given twice"));
                continue;
            }
            let now = group_of(prefix);
            match (group, &now) {
                (Some(_), Some(in_group)) => reasons.push(format!(
                    "prefix {prefix} is already in group {in_group}: a prefix belongs to one group (remove it first to move it)"
                )),
                (None, None) => reasons.push(format!("prefix {prefix} is in no group of the policy")),
                _ => {}
            }
            // What the file says of it: known if the drop-in names it, else it is the file's.
            let file = match self.entries.get(&prefix) {
                Some(entry) => entry.file.clone(),
                None => now.clone(),
            };
            let entry = Entry {
                group: group.cloned(),
                file,
            };
            if entry.group == entry.file {
                // Back to what the file says: nothing left to keep.
                next.entries.remove(&prefix);
            } else {
                next.entries.insert(prefix, entry);
            }
            moves.push(Moved {
                prefix,
                from: now,
                to: group.cloned(),
            });
        }
        if reasons.is_empty() {
            Ok((next, moves))
        } else {
            Err(Refused(reasons))
        }
    }
}

/// Moves the prefixes of `policy`'s groups as `moves` say, as laying the changed drop-in
/// over the policy file would.
pub fn patch(policy: &mut Policy, moves: &[Moved]) {
    for moved in moves {
        if let Some(from) = &moved.from
            && let Some(group) = policy.groups.iter_mut().find(|g| &g.name == from)
        {
            group.prefixes.retain(|p| *p != moved.prefix);
        }
        if let Some(to) = &moved.to
            && let Some(group) = policy.groups.iter_mut().find(|g| &g.name == to)
        {
            group.prefixes.push(moved.prefix);
        }
    }
}

/// A policy file with its drop-in laid over it.
#[derive(Debug)]
pub struct Layered {
    pub policy: Policy,
    pub drop_in: DropIn,
    pub warnings: Vec<Diagnostic>,
}

/// The policy `text` (called `name`) with the drop-in `drop_in` (its text and name) laid
/// over it: what the agent enforces and every command judges by.
pub fn parse(
    text: &str,
    name: &str,
    drop_in: Option<(&str, &str)>,
) -> Result<Layered, PolicyErrors> {
    let loaded = policy::parse(text, name);
    let parsed = drop_in.map(|(text, name)| DropIn::parse(text, name).map(|d| (d, name)));
    match (loaded, parsed) {
        (Ok(loaded), None) => Ok(Layered {
            policy: loaded.policy,
            drop_in: DropIn::default(),
            warnings: loaded.warnings,
        }),
        (Ok(loaded), Some(Ok((drop_in, drop_in_name)))) => {
            over(loaded.policy, loaded.warnings, drop_in, drop_in_name)
        }
        (Err(mut errors), Some(Err(more))) => {
            errors.0.extend(more.0);
            Err(errors)
        }
        (Err(errors), _) | (Ok(_), Some(Err(errors))) => Err(errors),
    }
}

/// `drop_in` (called `name`) laid over a policy that loaded with `warnings`.
pub fn over(
    mut policy: Policy,
    mut warnings: Vec<Diagnostic>,
    mut drop_in: DropIn,
    name: &str,
) -> Result<Layered, PolicyErrors> {
    match drop_in.lay_over(&mut policy, name) {
        Ok(more) => {
            warnings.extend(more);
            Ok(Layered {
                policy,
                drop_in,
                warnings,
            })
        }
        Err(mut errors) => {
            errors.0.splice(0..0, warnings);
            Err(errors)
        }
    }
}

/// The drop-in beside the policy file `path`, if there is one: its text and its path.
pub fn read_beside(path: &Path) -> Result<Option<(String, PathBuf)>, PolicyErrors> {
    let beside = path_beside(path);
    match std::fs::read_to_string(&beside) {
        Ok(text) => Ok(Some((text, beside))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PolicyErrors(vec![Diagnostic {
            severity: Severity::Error,
            file: beside.display().to_string(),
            line: None,
            column: None,
            message: format!("cannot read the prefixes drop-in: {e}"),
            hint: None,
        }])),
    }
}

/// Reads the policy file `path` and the drop-in beside it, laid over it.
pub fn load(path: &Path) -> Result<(Layered, Option<PathBuf>), PolicyErrors> {
    let text = policy::read(path)?;
    let beside = read_beside(path)?;
    let beside_name = beside.as_ref().map(|(_, p)| p.display().to_string());
    let layered = parse(
        &text,
        &path.display().to_string(),
        beside
            .as_ref()
            .map(|(text, _)| text.as_str())
            .zip(beside_name.as_deref()),
    )?;
    Ok((layered, beside.map(|(_, path)| path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "
version: 1
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.0/10, 100.64.5.0/24]
  - name: leased-line
    smtp: allow
    prefixes: [198.51.100.128/25]
";

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn prefixes(policy: &Policy, group: &str) -> Vec<String> {
        let mut listed: Vec<String> = policy
            .groups
            .iter()
            .find(|g| g.name == group)
            .unwrap()
            .prefixes
            .iter()
            .map(ToString::to_string)
            .collect();
        listed.sort();
        listed
    }

    fn group_of(policy: &Policy) -> impl Fn(IpNet) -> Option<String> + '_ {
        move |prefix| {
            policy
                .groups
                .iter()
                .find(|g| g.prefixes.contains(&prefix))
                .map(|g| g.name.clone())
        }
    }

    #[test]
    fn the_drop_in_sits_beside_the_policy() {
        assert_eq!(
            path_beside(Path::new("/etc/filter-agent/policy.yaml")),
            Path::new("/etc/filter-agent/policy.prefixes.yaml")
        );
        assert_eq!(
            path_beside(Path::new("edge.yml")),
            Path::new("edge.prefixes.yaml")
        );
        assert_eq!(
            path_beside(Path::new("/p/edge")),
            Path::new("/p/edge.prefixes.yaml")
        );
    }

    #[test]
    fn changes_written_read_back_and_laid_over_the_file_give_the_same_policy() {
        let layered = parse(POLICY, "p.yaml", None).unwrap();
        let mut policy = layered.policy;
        let mut drop_in = layered.drop_in;
        let steps = [
            Change::Add {
                group: "residential".into(),
                prefixes: vec![net("198.18.0.0/24"), net("2001:db8:9::/48")],
            },
            Change::Remove {
                prefixes: vec![net("100.64.5.0/24")],
            },
            // A move: out of residential, into leased-line.
            Change::Remove {
                prefixes: vec![net("198.18.0.0/24")],
            },
            Change::Add {
                group: "leased-line".into(),
                prefixes: vec![net("198.18.0.0/24")],
            },
            // Back to what the file says: the entry goes.
            Change::Add {
                group: "residential".into(),
                prefixes: vec![net("100.64.5.0/24")],
            },
        ];
        for change in &steps {
            let (next, moves) = drop_in.changed(&policy, group_of(&policy), change).unwrap();
            patch(&mut policy, &moves);
            drop_in = next;
            let text = drop_in.to_text("p.yaml").unwrap().unwrap();
            let relaid = parse(POLICY, "p.yaml", Some((&text, "p.prefixes.yaml"))).unwrap();
            assert!(relaid.warnings.is_empty(), "{:?}", relaid.warnings);
            for group in ["residential", "leased-line"] {
                assert_eq!(
                    prefixes(&relaid.policy, group),
                    prefixes(&policy, group),
                    "{change:?}\n{text}"
                );
            }
            assert_eq!(relaid.drop_in, drop_in, "{text}");
        }
        assert_eq!(drop_in.counts(), (2, 0));
        assert_eq!(
            drop_in
                .to_text("p.yaml")
                .unwrap()
                .unwrap()
                .lines()
                .skip(3)
                .collect::<Vec<_>>(),
            [
                "version: 1",
                "add:",
                "  leased-line:",
                "  - 198.18.0.0/24",
                "  residential:",
                "  - 2001:db8:9::/48",
            ]
        );
        // Removing what was added leaves nothing to keep.
        let (empty, _) = drop_in
            .changed(
                &policy,
                group_of(&policy),
                &Change::Remove {
                    prefixes: vec![net("198.18.0.0/24"), net("2001:db8:9::/48")],
                },
            )
            .unwrap();
        assert_eq!(empty.to_text("p.yaml").unwrap(), None);
    }

    #[test]
    fn a_change_is_refused_as_the_loader_refuses_with_every_reason() {
        let layered = parse(POLICY, "p.yaml", None).unwrap();
        let policy = layered.policy;
        let refused = |change: Change| {
            layered
                .drop_in
                .changed(&policy, group_of(&policy), &change)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(Change::Add {
                group: "nobody".into(),
                prefixes: vec![
                    net("198.18.0.0/24"),
                    net("100.64.0.0/10"),
                    net("198.18.0.0/24")
                ],
            }),
            "the policy has no group \"nobody\" (its groups: residential, leased-line)\n\
             prefix 100.64.0.0/10 is already in group residential: a prefix belongs to one group (remove it first to move it)\n\
             prefix 198.18.0.0/24 is given twice\nnothing changed"
        );
        assert_eq!(
            refused(Change::Remove {
                prefixes: vec![net("198.18.0.0/24")]
            }),
            "prefix 198.18.0.0/24 is in no group of the policy\nnothing changed"
        );
        assert_eq!(
            parse_prefix("100.64.0.1/10").unwrap_err(),
            "100.64.0.1/10 has host bits set (did you mean 100.64.0.0/10?)"
        );
        assert_eq!(
            parse_prefix("mail.example").unwrap_err(),
            "\"mail.example\" is not an IP address or prefix (expected ADDRESS/LENGTH, e.g. \
             100.64.0.10/32)"
        );
        assert_eq!(
            parse_prefix("10.0.0.0/33").unwrap_err(),
            "\"10.0.0.0/33\" has an invalid length (an IPv4 prefix length is 0 to 32)"
        );
    }

    #[test]
    fn a_bad_drop_in_refuses_the_policy_and_says_where() {
        let errors = |drop_in: &str| {
            parse(POLICY, "p.yaml", Some((drop_in, "p.prefixes.yaml")))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            errors("version: 1\nadd:\n  business: [198.18.0.0/24]\n"),
            "p.prefixes.yaml: error: prefix 198.18.0.0/24 is added to group \"business\", which the policy does not have\n  \
             hint: add the group to the policy, or `filter-agent prefixes remove 198.18.0.0/24`"
        );
        assert_eq!(
            errors("version: 1\nadd:\n  residential:\n  - 198.18.0.1/24\n"),
            "p.prefixes.yaml:4: error: 198.18.0.1/24 has host bits set (did you mean 198.18.0.0/24?)"
        );
        assert_eq!(
            errors("version: 1\nadd:\n  residential: [198.18.0.0/24]\nremove: [198.18.0.0/24]\n"),
            "p.prefixes.yaml:3: error: prefix 198.18.0.0/24 is named twice\n  \
             hint: the drop-in says once what becomes of a prefix"
        );
        assert!(errors("version: 2\n").contains("version 2 is not supported"));
        assert!(errors("version: 1\nadds: {}\n").contains("invalid prefixes drop-in"));
        // Entries that change nothing are warnings only.
        let layered = parse(
            POLICY,
            "p.yaml",
            Some((
                "version: 1\nadd:\n  residential: [100.64.5.0/24]\nremove: [10.0.0.0/8]\n",
                "p.prefixes.yaml",
            )),
        )
        .unwrap();
        let warnings: Vec<String> = layered.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0]
                .contains("prefix 10.0.0.0/8 is removed, but the policy file does not list it"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("where the policy file lists it too"),
            "{warnings:?}"
        );
        assert_eq!(
            prefixes(&layered.policy, "residential"),
            ["100.64.0.0/10", "100.64.5.0/24"]
        );
    }
}
