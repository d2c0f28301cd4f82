//! The few libc calls the control socket needs: user and group names (NSS, reentrant) and
//! the supplementary groups of a socket's peer.

use std::{
    ffi::{CStr, CString, c_char, c_int},
    io,
    mem::{MaybeUninit, size_of},
    os::fd::RawFd,
};

/// Runs a reentrant NSS lookup (`getpwuid_r` and friends), growing the scratch buffer while
/// it reports ERANGE, and hands the entry to `read` while the buffer it points into lives.
fn nss_lookup<E, T>(
    mut call: impl FnMut(*mut E, *mut c_char, usize, *mut *mut E) -> c_int,
    read: impl FnOnce(&E) -> T,
) -> io::Result<Option<T>> {
    let mut buffer: Vec<c_char> = vec![0; 1024];
    loop {
        let mut entry = MaybeUninit::<E>::uninit();
        let mut found: *mut E = std::ptr::null_mut();
        let rc = call(
            entry.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        );
        match rc {
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 2, 0),
            0 if found.is_null() => return Ok(None),
            // SAFETY: on success the entry is initialised and its strings point into
            // `buffer`, which outlives this borrow.
            0 => return Ok(Some(read(unsafe { entry.assume_init_ref() }))),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

fn string_at(pointer: *const c_char) -> String {
    // SAFETY: NSS fills name fields with NUL-terminated strings.
    unsafe { CStr::from_ptr(pointer) }
        .to_string_lossy()
        .into_owned()
}

pub(super) fn user_name(uid: u32) -> Option<String> {
    nss_lookup(
        // SAFETY: all pointers are valid for the sizes given.
        |entry, buffer, len, found| unsafe { libc::getpwuid_r(uid, entry, buffer, len, found) },
        |entry: &libc::passwd| string_at(entry.pw_name),
    )
    .ok()
    .flatten()
}

pub(super) fn group_name(gid: u32) -> Option<String> {
    nss_lookup(
        // SAFETY: all pointers are valid for the sizes given.
        |entry, buffer, len, found| unsafe { libc::getgrgid_r(gid, entry, buffer, len, found) },
        |entry: &libc::group| string_at(entry.gr_name),
    )
    .ok()
    .flatten()
}

/// The id of a group by name; `Ok(None)` if there is no such group.
pub(super) fn group_id(name: &str) -> io::Result<Option<u32>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name contains NUL"))?;
    nss_lookup(
        // SAFETY: all pointers are valid for the sizes given; `c_name` is NUL-terminated.
        |entry, buffer, len, found| unsafe {
            libc::getgrnam_r(c_name.as_ptr(), entry, buffer, len, found)
        },
        |entry: &libc::group| entry.gr_gid,
    )
}

/// The supplementary groups of the process at the other end of a connected Unix socket, as
/// they were when it connected (SO_PEERGROUPS, Linux 4.13+). Unlike reading
/// /proc/PID/status later, this cannot be fooled by the peer exiting and its pid being
/// reused, or by it changing groups after connecting.
pub(super) fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let entries = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(entries);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // ERANGE: the kernel has set `len` to the size needed.
        if error.raw_os_error() == Some(libc::ERANGE) && entries > groups.len() {
            groups.resize(entries, 0);
        } else {
            return Err(error);
        }
    }
}

/// The `Groups:` line of /proc/PID/status, for kernels without SO_PEERGROUPS.
pub(super) fn groups_from_status(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::{fd::AsRawFd, unix::net::UnixStream};

    #[test]
    fn names_of_root() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("no-such-group-filter-agent").unwrap(), None);
        assert_eq!(user_name(u32::MAX - 7), None);
    }

    #[test]
    fn peer_groups_are_our_own_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut ours = vec![0 as libc::gid_t; 65536];
        // SAFETY: `ours` has room for the maximum number of groups.
        let n = unsafe { libc::getgroups(ours.len() as c_int, ours.as_mut_ptr()) };
        assert!(n >= 0);
        ours.truncate(n as usize);
        let mut theirs = peer_groups(a.as_raw_fd()).unwrap();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }

    #[test]
    fn groups_line_of_proc_status() {
        let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 1000 \nNgid:\t0\n";
        assert_eq!(groups_from_status(status), Some(vec![4, 27, 1000]));
        assert_eq!(groups_from_status("Groups:\t\n"), Some(vec![]));
        assert_eq!(groups_from_status("Name:\tx\n"), None);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(groups_from_status(&own).is_some());
    }
}
