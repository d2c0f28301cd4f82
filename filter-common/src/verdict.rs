//! The shared vocabulary: every value that crosses between the kernel program and
//! userspace as a number has one type here, with its number (`repr(u32)`, `as u32`), its
//! name in output, policies and metrics (`name()`, `from_name()`) and a fail-closed
//! decoding of a raw number (`TryFrom<u32>`, the unknown number as the error).
//!
//! Map values keep raw `u32` fields (see `records`), so a value the agent does not know
//! decodes to an error instead of undefined behaviour.

/// Declares a `repr(u32)` enum with `ALL`, `COUNT`, `name()`, `from_name()`,
/// `TryFrom<u32>` and `Display`, and (with the `user` feature) serde as its name.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $value:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant = $value, )+
        }

        impl $name {
            pub const COUNT: usize = [$($value),+].len();
            /// Every value, in numeric order.
            pub const ALL: [$name; Self::COUNT] = [$($name::$variant),+];

            /// The name used in output, policies, logs and metrics labels.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl TryFrom<u32> for $name {
            /// The number that is not a value.
            type Error = u32;

            fn try_from(value: u32) -> Result<Self, u32> {
                match value {
                    $( $value => Ok($name::$variant), )+
                    other => Err(other),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                // `pad`, so widths in format strings line tables up.
                f.pad(self.name())
            }
        }

        #[cfg(feature = "user")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        #[cfg(feature = "user")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // A visitor, so borrowed and owned strings both work (serde_json::Value,
                // readers).
                struct Name;
                impl serde::de::Visitor<'_> for Name {
                    type Value = $name;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " name"))
                    }
                    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<$name, E> {
                        $name::from_name(name)
                            .ok_or_else(|| E::unknown_variant(name, &[$($text),+]))
                    }
                }
                deserializer.deserialize_str(Name)
            }
        }
    };
}

wire_enum! {
    /// What happens to a frame; in events as the XDP return code says it.
    pub enum Verdict {
        Pass = 0 => "pass",
        Drop = 1 => "drop",
        /// Dropped, and answered with a TCP RST+ACK sent back out of the interface
        /// (XDP_TX).
        Reject = 2 => "reject",
    }
}

wire_enum! {
    /// Why a frame got its verdict. The number is the counter index.
    pub enum Reason {
        NotIp = 0 => "not-ip",
        NotTcp = 1 => "not-tcp",
        Fragment = 2 => "fragment",
        Port = 3 => "port",
        Unmanaged = 4 => "unmanaged",
        Exempt = 5 => "exempt",
        Relay = 6 => "relay",
        Blocked = 7 => "blocked",
        Monitored = 8 => "monitored",
        Malformed = 9 => "malformed",
        /// A SYN to a relay over the source's `relay_limit`.
        RateLimited = 10 => "rate-limited",
    }
}

wire_enum! {
    /// Address family of a frame, as far as it was parsed.
    pub enum Family {
        /// Not IP, or malformed before the IP header was found.
        Other = 0 => "other",
        Ipv4 = 1 => "ipv4",
        Ipv6 = 2 => "ipv6",
    }
}

impl Family {
    /// A raw family number, anything unknown as `Other` (which carries no address).
    pub fn from_code(code: u32) -> Family {
        Family::try_from(code).unwrap_or(Family::Other)
    }
}

wire_enum! {
    /// What a group does with traffic to the filtered ports (`SourceRule::smtp`). The
    /// kernel treats anything but `Allow` as `Block`: fail closed.
    pub enum Smtp {
        Block = 1 => "block",
        Allow = 2 => "allow",
    }
}

wire_enum! {
    /// A group's own mode (`SourceRule::mode`), precomputed by the agent into every rule of
    /// the group so the lookup that finds the group also says how it is enforced.
    pub enum GroupMode {
        /// The policy's top-level mode (`Config::flags`), so switching the policy's mode
        /// stays one config write whatever the number of prefixes.
        Policy = 0 => "policy",
        /// Dropped (or rejected) whatever the policy's mode.
        Enforce = 1 => "enforce",
        /// Counted as `monitored` and passed whatever the policy's mode.
        Monitor = 2 => "monitor",
    }
}

wire_enum! {
    /// What a blocked frame gets (`Config::action`).
    pub enum Action {
        /// Dropped silently.
        Drop = 0 => "drop",
        /// A connection request is answered with a TCP RST+ACK sent back out of the
        /// interface (XDP_TX); other segments are dropped.
        Reject = 1 => "reject",
    }
}

wire_enum! {
    /// Indexes of the `ACTION_STATS` map: what the program did besides pass and drop.
    pub enum ActionStat {
        /// RST+ACK replies sent with XDP_TX.
        ResetsSent = 0 => "resets-sent",
        /// Events written to the ring buffer.
        EventsSent = 1 => "events-sent",
        /// Events the sampler held back (over `events.per_second`).
        EventsSuppressed = 2 => "events-suppressed",
        /// Events lost because the ring buffer was full.
        EventsLost = 3 => "events-lost",
        /// Offender alert events raised.
        OffenderAlerts = 4 => "offender-alerts",
    }
}

wire_enum! {
    /// `Event::kind`.
    pub enum EventKind {
        /// A sampled frame that was dropped, rejected or (monitor mode) counted.
        Sample = 1 => "sample",
        /// A source reached `offender_alert_after` attempts in its window.
        Offender = 2 => "offender",
    }
}

pub const REASON_COUNT: u32 = Reason::COUNT as u32;
pub const FAMILY_COUNT: u32 = Family::COUNT as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_name(reason.name()), Some(reason));
            assert_eq!(Reason::try_from(reason as u32), Ok(reason));
        }
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::from_name(verdict.name()), Some(verdict));
            assert_eq!(Verdict::try_from(verdict as u32), Ok(verdict));
        }
        assert_eq!(Smtp::try_from(Smtp::Allow as u32), Ok(Smtp::Allow));
        assert_eq!(EventKind::from_name("offender"), Some(EventKind::Offender));
    }

    #[test]
    fn counter_indexes_are_dense_and_in_order() {
        // The discriminant is the counter index: ALL must list them 0, 1, 2, ...
        for (index, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index);
        }
        for (index, family) in Family::ALL.into_iter().enumerate() {
            assert_eq!(family as usize, index);
        }
        for (index, stat) in ActionStat::ALL.into_iter().enumerate() {
            assert_eq!(stat as usize, index);
        }
    }

    #[test]
    fn unknown_numbers_and_names_fail_closed() {
        assert_eq!(Verdict::try_from(3), Err(3));
        assert_eq!(Smtp::try_from(0), Err(0));
        assert_eq!(Reason::try_from(REASON_COUNT), Err(REASON_COUNT));
        assert_eq!(Family::from_code(7), Family::Other);
        assert_eq!(Verdict::from_name("Pass"), None);
        assert_eq!(Reason::from_name("rate_limited"), None);
    }

    #[test]
    fn names_are_what_users_read() {
        assert_eq!(Reason::RateLimited.name(), "rate-limited");
        assert_eq!(Reason::NotIp.to_string(), "not-ip");
        assert_eq!(Verdict::Reject.name(), "reject");
        assert_eq!(ActionStat::ResetsSent.name(), "resets-sent");
        assert_eq!(Family::Ipv6.name(), "ipv6");
        assert_eq!(Smtp::Block.name(), "block");
        assert_eq!(Action::Reject.name(), "reject");
    }
}
