//! [`Config`]: everything scalar the program needs, in one array slot.

use crate::verdict::Action;

/// Number of 64-bit words in the destination-port bitmap (one bit per port).
pub const PORT_WORDS: usize = 65536 / 64;

/// `Config::flags`: count would-be drops as `monitored` and drop nothing.
pub const FLAG_MONITOR: u32 = 1;

/// Relay prefixes per address family. ISPs run a handful of relays; a short scan of them
/// in the config costs a fraction of a second trie lookup on every blocked SYN.
pub const MAX_RELAYS: usize = 16;

/// An IPv4 relay prefix. Both fields hold the network-order bytes as read from the
/// packet (`u32::from_ne_bytes(octets)`), so matching needs no byte swapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayV4 {
    pub network: u32,
    pub mask: u32,
}

/// An IPv6 relay prefix, as two native words of network-order bytes each.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayV6 {
    pub network: [u64; 2],
    pub mask: [u64; 2],
}

/// Everything scalar the program needs, in one array slot, so it changes in one write.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub flags: u32,
    /// An [`Action`] as u32.
    pub action: u32,
    /// How many entries of `relays_v4` / `relays_v6` are in use, longest prefix first.
    pub relays_v4_len: u32,
    pub relays_v6_len: u32,
    /// Relay limit: nanoseconds per SYN token (60 s / syn_per_minute); 0 = no limit.
    pub relay_interval_ns: u64,
    /// Relay limit: how far ahead of now the bucket may run, `(burst - 1) * interval`.
    pub relay_tolerance_ns: u64,
    /// Offender alerts: a source with `offender_alert_after` blocked attempts inside one
    /// window of `offender_window_ns` raises one alert event; 0 = no alerts.
    pub offender_alert_after: u64,
    pub offender_window_ns: u64,
    /// Drop-event sampling: nanoseconds per event (1 s / per_second); 0 = no events.
    pub event_interval_ns: u64,
    /// Drop-event sampling: burst tolerance, as for the relay limit.
    pub event_tolerance_ns: u64,
    pub relays_v4: [RelayV4; MAX_RELAYS],
    pub relays_v6: [RelayV6; MAX_RELAYS],
    /// Bit `p % 64` of word `p / 64` is set when TCP destination port `p` is filtered.
    pub ports: [u64; PORT_WORDS],
}

impl Config {
    pub const fn empty() -> Self {
        Config {
            flags: 0,
            action: Action::Drop as u32,
            relays_v4_len: 0,
            relays_v6_len: 0,
            relay_interval_ns: 0,
            relay_tolerance_ns: 0,
            offender_alert_after: 0,
            offender_window_ns: 0,
            event_interval_ns: 0,
            event_tolerance_ns: 0,
            relays_v4: [RelayV4 {
                network: 0,
                mask: 0,
            }; MAX_RELAYS],
            relays_v6: [RelayV6 {
                network: [0; 2],
                mask: [0; 2],
            }; MAX_RELAYS],
            ports: [0; PORT_WORDS],
        }
    }

    #[inline(always)]
    pub fn port_filtered(&self, port: u16) -> bool {
        let word = (port >> 6) as usize;
        // The index is always < PORT_WORDS; `get` keeps the verifier and the compiler agreeing.
        match self.ports.get(word) {
            Some(bits) => bits & (1u64 << (port & 63)) != 0,
            None => false,
        }
    }

    pub fn set_port(&mut self, port: u16) {
        self.ports[(port >> 6) as usize] |= 1u64 << (port & 63);
    }

    pub fn monitor(&self) -> bool {
        self.flags & FLAG_MONITOR != 0
    }

    /// Anything but `reject` drops: an unknown action fails closed.
    pub fn reject(&self) -> bool {
        self.action == Action::Reject as u32
    }

    /// True when the destination (network-order bytes read as a native u32) is a relay.
    #[inline(always)]
    pub fn is_relay_v4(&self, destination: u32) -> bool {
        for i in 0..MAX_RELAYS {
            if i as u32 >= self.relays_v4_len {
                break;
            }
            let relay = &self.relays_v4[i];
            if destination & relay.mask == relay.network {
                return true;
            }
        }
        false
    }

    /// True when the destination (network-order bytes read as two native u64) is a relay.
    #[inline(always)]
    pub fn is_relay_v6(&self, destination: [u64; 2]) -> bool {
        for i in 0..MAX_RELAYS {
            if i as u32 >= self.relays_v6_len {
                break;
            }
            let relay = &self.relays_v6[i];
            if destination[0] & relay.mask[0] == relay.network[0]
                && destination[1] & relay.mask[1] == relay.network[1]
            {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bits() {
        let mut config = Config::empty();
        config.set_port(25);
        config.set_port(65535);
        assert!(config.port_filtered(25));
        assert!(config.port_filtered(65535));
        assert!(
            !config.port_filtered(24) && !config.port_filtered(587) && !config.port_filtered(0)
        );
    }

    #[test]
    fn relays_match_by_prefix_and_only_in_use() {
        let mut config = Config::empty();
        // 203.0.113.0/24 as network-order bytes read natively.
        let network = u32::from_ne_bytes([203, 0, 113, 0]);
        let mask = u32::from_ne_bytes([255, 255, 255, 0]);
        config.relays_v4[0] = RelayV4 { network, mask };
        let inside = u32::from_ne_bytes([203, 0, 113, 25]);
        assert!(!config.is_relay_v4(inside), "not in use until counted");
        config.relays_v4_len = 1;
        assert!(config.is_relay_v4(inside));
        assert!(!config.is_relay_v4(u32::from_ne_bytes([203, 0, 114, 25])));
    }

    #[test]
    fn an_unknown_action_drops() {
        let mut config = Config::empty();
        assert!(!config.reject());
        config.action = Action::Reject as u32;
        assert!(config.reject());
        config.action = 7;
        assert!(!config.reject());
    }
}
