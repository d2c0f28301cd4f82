//! Subscribers, not addresses: the abuse desk exempts a customer by name, and the
//! exemption follows the customer's session from address to address.
//!
//! - [`sessions`]: who is online with which addresses, fed by the BNG's hooks
//!   (`filter-agent sessions up/down`) and by RADIUS accounting ([`accounting`],
//!   [`radius`]), persisted in the state directory.
//! - [`exemptions`]: the exemptions granted by subscriber name.
//!
//! In the kernel an exempt subscriber's addresses are exemption entries like those added
//! by prefix, so the filter itself knows nothing of subscribers.

pub mod accounting;
pub mod exemptions;
pub mod radius;
pub mod sessions;

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;

use crate::{exemptions::check_against_policy, image::MapImage};
pub use exemptions::{SubscriberExemption, SubscriberExemptions};
pub use sessions::{Feed, Session, SessionKey, SessionTable};

/// The files in the state directory.
pub const SESSIONS_FILE: &str = "sessions.yaml";
pub const EXEMPTIONS_FILE: &str = "subscriber-exemptions.yaml";

/// The sessions and the exemptions by name: what decides which addresses are exempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribers {
    pub sessions: SessionTable,
    pub exemptions: SubscriberExemptions,
}

impl Subscribers {
    pub fn load(state_dir: &Path) -> anyhow::Result<Subscribers> {
        Ok(Subscribers {
            sessions: SessionTable::load(&state_dir.join(SESSIONS_FILE))?,
            exemptions: SubscriberExemptions::load(&state_dir.join(EXEMPTIONS_FILE))?,
        })
    }

    /// The addresses of `subscriber`'s sessions, sorted.
    pub fn addresses_of(&self, subscriber: &str) -> Vec<IpNet> {
        let mut addresses: Vec<IpNet> = self
            .sessions
            .of_subscriber(subscriber)
            .flat_map(|s| s.addresses.iter().copied())
            .collect();
        addresses.sort();
        addresses
    }

    /// The addresses of exempt subscribers that an exemption changes something for under
    /// `policy` (the image of the policy alone): inside a block group, not a policy prefix.
    pub fn exempt_addresses(&self, policy: &MapImage) -> Vec<IpNet> {
        self.exemptions
            .iter()
            .flat_map(|e| self.addresses_of(&e.subscriber))
            .filter(|&address| check_against_policy(policy, address).is_ok())
            .collect()
    }

    /// The subscriber whose session holds `addr`.
    pub fn name_at(&self, addr: IpAddr) -> Option<&str> {
        self.sessions.holder_of(addr).map(|s| s.subscriber.as_str())
    }
}

/// Why an exemption would do nothing at a session's address under `policy`, if so
/// (outside every block group, or a prefix the policy itself lists): the session is
/// accepted all the same, and this is noted.
pub fn note_for(policy: &MapImage, address: IpNet) -> Option<String> {
    check_against_policy(policy, address)
        .err()
        .map(|e| format!("{e}; an exemption has nothing to do there"))
}

/// Adds the exempt subscribers' addresses to `image` (the policy plus the CLI exemptions)
/// as exemption entries.
pub fn apply(image: &mut MapImage, policy: &MapImage, subscribers: &Subscribers) {
    crate::exemptions::apply_prefixes(image, subscribers.exempt_addresses(policy));
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::exemptions::parse_terms;

    const POLICY: &str = "
version: 1
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.0/10, \"2001:db8:1000::/36\"]
  - name: leased-line
    smtp: allow
    prefixes: [198.51.100.128/25]
";

    fn session(id: &str, subscriber: &str, addresses: &[&str]) -> Session {
        Session {
            key: SessionKey {
                feed: Feed::Hook,
                nas: None,
                session_id: id.into(),
            },
            subscriber: subscriber.into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            started_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn only_an_exempt_subscribers_addresses_inside_block_groups_are_exempt() {
        let dir = tempfile::tempdir().unwrap();
        let policy = crate::policy::parse(POLICY, "p.yaml")
            .unwrap()
            .policy
            .compile();
        let mut subscribers = Subscribers::load(dir.path()).unwrap();
        subscribers.sessions.up(session(
            "ppp0",
            "alice",
            &[
                "100.64.0.20/32",
                "198.51.100.130/32",
                "2001:db8:1000:20::/64",
            ],
        ));
        subscribers
            .sessions
            .up(session("ppp1", "bob", &["100.64.0.21/32"]));
        assert!(
            subscribers.exempt_addresses(&policy).is_empty(),
            "nobody exempt yet"
        );
        let terms = parse_terms("ticket", None, None, "root", SystemTime::now()).unwrap();
        subscribers
            .exemptions
            .insert(SubscriberExemption::new("alice".into(), terms))
            .unwrap();
        let exempt: Vec<String> = subscribers
            .exempt_addresses(&policy)
            .iter()
            .map(ToString::to_string)
            .collect();
        // The leased-line address sends anyway: nothing for an exemption to do there.
        assert_eq!(exempt, ["100.64.0.20/32", "2001:db8:1000:20::/64"]);
        assert!(note_for(&policy, "198.51.100.130/32".parse().unwrap()).is_some());
        assert!(note_for(&policy, "100.64.0.20/32".parse().unwrap()).is_none());
        assert_eq!(
            subscribers.name_at("2001:db8:1000:20::99".parse().unwrap()),
            Some("alice")
        );
        assert_eq!(
            subscribers.name_at("100.64.0.21".parse().unwrap()),
            Some("bob")
        );
        assert_eq!(subscribers.name_at("100.64.0.22".parse().unwrap()), None);

        let mut image = policy.clone();
        apply(&mut image, &policy, &subscribers);
        assert_eq!(image.source_count(), policy.source_count() + 2);
    }
}
