//! User and group names from NSS (which may be files, LDAP or sssd): labels for the
//! agent's logs and the CLI's advice, and the group the control socket is bound to.

use std::io;

use nix::unistd::{Gid, Group, Uid, User};

pub(super) fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

pub(super) fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|group| group.name)
}

/// The id of a group by name; `Ok(None)` if there is no such group.
pub(super) fn group_id(name: &str) -> io::Result<Option<u32>> {
    // nix would answer "no such group", which hides the real mistake.
    if name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "group name contains NUL",
        ));
    }
    let group = Group::from_name(name).map_err(io::Error::from)?;
    Ok(group.map(|group| group.gid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_root() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("no-such-group-filter-agent").unwrap(), None);
        assert_eq!(user_name(u32::MAX - 7), None);
    }
}
