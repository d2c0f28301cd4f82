//! The agent's files in its state directory (exemptions, subscriber exemptions, sessions,
//! the policy history and a pending rollback) and the policy file `apply` writes: each
//! written whole or not at all, also across a crash or power loss, and read as YAML with
//! errors on one line (they go into log lines).

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
/// The file gets mode 0640.
pub fn write_atomically(path: &Path, text: &str, what: &str) -> anyhow::Result<()> {
    write_atomically_with_mode(path, text.as_bytes(), 0o640, what)
}

/// [`write_atomically`] with the bytes given and the file's mode (whatever the umask).
pub fn write_atomically_with_mode(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    what: &str,
) -> anyhow::Result<()> {
    let dir = create_parent(path)?;
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);
    let written = write_synced(&temp, bytes, mode)
        .and_then(|()| fs::rename(&temp, path))
        .with_context(|| format!("cannot write {what} {}", path.display()));
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&temp);
    }
    written?;
    sync_dir(dir)
}

/// Writes a file nothing reads until a later [`write_atomically`] in the same directory
/// names it (a generation's text, before the history's index does): created afresh and
/// synced, without a rename; that later write's directory sync makes its entry durable.
/// One left half-written by a crash is named by nothing, and replaced when written again.
pub fn write_unreferenced(path: &Path, text: &str, what: &str) -> anyhow::Result<()> {
    create_parent(path)?;
    write_synced(path, text.as_bytes(), 0o640)
        .with_context(|| format!("cannot write {what} {}", path.display()))
}

/// Removes `path` durably (its directory synced); a file that is not there is no error.
pub fn remove(path: &Path, what: &str) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(directory_of(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {what} {}", path.display())),
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The directory `path` is in, created (mode 0755) if missing.
fn create_parent(path: &Path) -> anyhow::Result<&Path> {
    let dir = directory_of(path);
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    Ok(dir)
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
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

/// Creates `path` afresh with `mode` (whatever the umask), writes `bytes` and syncs.
fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    // A temporary file left by a crash is stale: the rename never happened.
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // create_new: never write through a file or link someone else put there.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_the_file_whole_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file.yaml");
        write_atomically(&path, "one", "the file").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        write_atomically_with_mode(&path, b"two", 0o644, "the file").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["file.yaml"]);
    }
}
