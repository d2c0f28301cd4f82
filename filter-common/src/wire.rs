//! Protocol numbers and header sizes fixed by `docs/semantics.md`, with the small
//! header-length rules the kernel program, the reference model and the frame builders of
//! the tests all need. Pure functions, so they are unit-tested on the host.

pub const ETH_HEADER_LEN: usize = 14;
/// Offset of the EtherType in an Ethernet header.
pub const ETHERTYPE_OFFSET: usize = 12;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_PPPOE_DISCOVERY: u16 = 0x8863;
pub const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;

/// VLAN tag protocol identifiers read as a tag: 802.1Q, 802.1ad (QinQ outer) and the
/// legacy QinQ 0x9100.
pub const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
pub const VLAN_TAG_LEN: usize = 4;
/// Tags read before the EtherType that follows must be IP or PPPoE (semantics step 1).
pub const MAX_VLAN_TAGS: usize = 2;

/// The 6-byte PPPoE session header plus the 2-byte PPP protocol.
pub const PPPOE_HEADER_LEN: usize = 8;
pub const PPP_IPV4: u16 = 0x0021;
pub const PPP_IPV6: u16 = 0x0057;
pub const PPP_LCP: u16 = 0xc021;

pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const TCP_MIN_HEADER_LEN: usize = 20;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv6 extension headers the parser walks (semantics step 2).
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AUTHENTICATION: u8 = 51;
pub const IPV6_DESTINATION_OPTIONS: u8 = 60;
pub const IPV6_NO_NEXT_HEADER: u8 = 59;
pub const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
/// Extension headers walked at most; a ninth makes the frame malformed.
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

#[inline(always)]
pub const fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(ethertype, 0x8100 | 0x88a8 | 0x9100)
}

#[inline(always)]
pub const fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        IPV6_HOP_BY_HOP
            | IPV6_ROUTING
            | IPV6_FRAGMENT
            | IPV6_AUTHENTICATION
            | IPV6_DESTINATION_OPTIONS
    )
}

/// The length of an IPv6 extension header from its type and its length byte (the
/// second byte): the Authentication Header counts 4-byte words beyond the first two
/// (RFC 4302), the fragment header is always 8 bytes, the others count 8-byte units
/// beyond the first (RFC 8200).
#[inline(always)]
pub const fn ipv6_extension_len(next_header: u8, length_byte: u8) -> usize {
    match next_header {
        IPV6_FRAGMENT => IPV6_FRAGMENT_HEADER_LEN,
        IPV6_AUTHENTICATION => (length_byte as usize + 2) * 4,
        _ => (length_byte as usize + 1) * 8,
    }
}

/// A new connection: SYN set, ACK and RST clear. What the relay limit counts and
/// `reject` answers.
#[inline(always)]
pub const fn is_connection_request(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_header_lengths_follow_their_rfcs() {
        assert_eq!(ipv6_extension_len(IPV6_HOP_BY_HOP, 0), 8);
        assert_eq!(ipv6_extension_len(IPV6_DESTINATION_OPTIONS, 1), 16);
        assert_eq!(ipv6_extension_len(IPV6_ROUTING, 255), 2048);
        assert_eq!(ipv6_extension_len(IPV6_AUTHENTICATION, 4), 24);
        // The fragment header's second byte is reserved, not a length.
        assert_eq!(ipv6_extension_len(IPV6_FRAGMENT, 9), 8);
    }

    #[test]
    fn only_walked_headers_are_extensions() {
        for next in [0, 43, 44, 51, 60] {
            assert!(is_ipv6_extension(next), "{next}");
        }
        for next in [IPPROTO_TCP, IPPROTO_UDP, IPV6_NO_NEXT_HEADER, 50, 135] {
            assert!(!is_ipv6_extension(next), "{next}");
        }
    }

    #[test]
    fn vlan_tpids_are_the_listed_ones() {
        for tpid in VLAN_TPIDS {
            assert!(is_vlan_tpid(tpid));
        }
        assert!(!is_vlan_tpid(ETHERTYPE_IPV4));
        assert!(!is_vlan_tpid(ETHERTYPE_PPPOE_SESSION));
    }

    #[test]
    fn a_connection_request_is_a_bare_syn() {
        assert!(is_connection_request(TCP_SYN));
        assert!(is_connection_request(TCP_SYN | TCP_FIN | TCP_PSH));
        assert!(!is_connection_request(TCP_SYN | TCP_ACK));
        assert!(!is_connection_request(TCP_SYN | TCP_RST));
        assert!(!is_connection_request(TCP_ACK));
    }
}
