//! Test support shared by the control socket's tests.

use std::{
    fs::{self, Permissions},
    os::unix::fs::PermissionsExt,
};

use tempfile::TempDir;

/// A directory under the system temp dir, removed on drop; mode 0755 (whatever the
/// umask), so a test may connect as another user.
pub(super) fn temp_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("filter-agent-control-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
    dir
}
