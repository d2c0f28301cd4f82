//! The supplementary groups of a control socket's peer. Its uid, gid and pid come from
//! SO_PEERCRED (`UnixStream::peer_cred`); SO_PEERGROUPS is in neither nix nor rustix, so
//! it is the one socket option read by hand.

use std::{io, mem::size_of, os::fd::RawFd};

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
    fn peer_groups_are_our_own_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|gid| gid.as_raw())
            .collect();
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
