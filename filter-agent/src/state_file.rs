//! The agent's files in its state directory (exemptions, subscriber exemptions, sessions):
//! each written whole or not at all, also across a crash or power loss, and read as YAML
//! with errors on one line (they go into log lines).

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::Context;

/// Writes `text` to `path` so that it holds either the old or the new contents, never a
/// mix: a temporary file in the same directory is written and synced, renamed over the old
/// one, and the directory synced. `what` names the file in errors ("the exemptions file").
pub fn write_atomically(path: &Path, text: &str, what: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);
    let written = write_synced(&temp, text.as_bytes())
        .and_then(|()| fs::rename(&temp, path))
        .with_context(|| format!("cannot write {what} {}", path.display()));
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&temp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// The file's text; `None` if there is no file (nothing was written yet).
pub fn read(path: &Path, what: &str) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {what} {}", path.display())),
    }
}

/// Reads YAML with the error on one line, as it goes into a log line.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, serde_saphyr::options! { with_snippet: false })
}

/// YAML as the state files hold it: YAML 1.2 rules (timestamps need no quotes), no
/// `%YAML` line so a header comment stays the first line.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    let options = serde_saphyr::ser_options! { yaml_12: true, no_lang_directive: true };
    Ok(serde_saphyr::to_string_with_options(value, options)?)
}

/// Creates `path` afresh with mode 0640 (whatever the umask), writes `bytes` and syncs.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A temporary file left by a crash is stale: the rename never happened.
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // create_new: never write through a file or link someone else put there.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o640))?;
    file.write_all(bytes)?;
    file.sync_all()
}
