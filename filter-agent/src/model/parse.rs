//! Steps 1 to 4.1 of `docs/semantics.md`: link layer, IP header, extension headers,
//! protocol, fragments and ports. Every read goes through [`Cursor`], so a truncated frame
//! can only ever turn into `None`, never into a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter_common::{
    Family, Reason,
    wire::{
        ETH_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_OFFSET, ETHERTYPE_PPPOE_SESSION,
        IPPROTO_TCP, IPV4_MIN_HEADER_LEN, IPV6_FRAGMENT, IPV6_FRAGMENT_HEADER_LEN, IPV6_HEADER_LEN,
        MAX_IPV6_EXTENSION_HEADERS, MAX_VLAN_TAGS, PPP_IPV4, PPP_IPV6, PPPOE_HEADER_LEN,
        TCP_MIN_HEADER_LEN, VLAN_TAG_LEN, ipv6_extension_len, is_connection_request,
        is_ipv6_extension, is_vlan_tpid,
    },
};

/// What parsing alone can tell about a frame.
#[derive(Debug)]
pub enum Parsed {
    /// Decided without the policy (not-ip, not-tcp, fragment).
    Pass { family: Family, reason: Reason },
    /// Malformed; `source` is set when the whole source address was inside the frame.
    Malformed {
        family: Family,
        source: Option<IpAddr>,
    },
    /// A TCP frame whose ports were read: the policy decides.
    Tcp {
        family: Family,
        source: IpAddr,
        destination: IpAddr,
        dport: u16,
        segment: Segment,
    },
}

/// Where a TCP segment's headers are, and what the relay limit and `reject` read from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP header (after IPv4 options or IPv6 extension headers).
    pub l4: usize,
    /// Offset of the PPPoE session header, when the IP packet is carried in one.
    pub pppoe: Option<usize>,
    /// TCP header byte 13 (the flags), when it is inside the frame.
    pub flags: Option<u8>,
    /// The TCP data offset in 4-byte words (the high nibble of byte 12), when inside.
    pub data_offset: Option<u8>,
    /// The whole 20-byte TCP header is inside the frame.
    pub full_header: bool,
}

impl Segment {
    /// SYN set, ACK and RST clear: a new connection, what the relay limit counts and
    /// `reject` answers. False when the flags are not inside the frame.
    pub fn is_connection_request(&self) -> bool {
        self.flags.is_some_and(is_connection_request)
    }

    /// A connection request whose whole 20-byte header is inside the frame with a data
    /// offset of at least 5: what `action: reject` answers with a reset.
    pub fn can_be_rejected(&self) -> bool {
        self.full_header
            && self.is_connection_request()
            && self
                .data_offset
                .is_some_and(|words| usize::from(words) * 4 >= TCP_MIN_HEADER_LEN)
    }
}

/// Bounds-checked big-endian reads at absolute frame offsets.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn has(&self, offset: usize, len: usize) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.0.len())
    }

    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }

    fn u8(&self, offset: usize) -> Option<u8> {
        self.0.get(offset).copied()
    }

    fn u16(&self, offset: usize) -> Option<u16> {
        self.bytes(offset).map(u16::from_be_bytes)
    }
}

#[derive(Clone, Copy)]
enum Ip {
    V4,
    V6,
}

impl Ip {
    fn family(self) -> Family {
        match self {
            Ip::V4 => Family::Ipv4,
            Ip::V6 => Family::Ipv6,
        }
    }

    /// The source address, if it lies wholly inside the frame.
    fn source(self, c: &Cursor, l3: usize) -> Option<IpAddr> {
        match self {
            Ip::V4 => c.bytes::<4>(l3 + 12).map(|a| Ipv4Addr::from(a).into()),
            Ip::V6 => c.bytes::<16>(l3 + 8).map(|a| Ipv6Addr::from(a).into()),
        }
    }

    fn destination(self, c: &Cursor, l3: usize) -> Option<IpAddr> {
        match self {
            Ip::V4 => c.bytes::<4>(l3 + 16).map(|a| Ipv4Addr::from(a).into()),
            Ip::V6 => c.bytes::<16>(l3 + 24).map(|a| Ipv6Addr::from(a).into()),
        }
    }
}

/// What step 3 and the port read need from the IP header.
struct L4 {
    protocol: u8,
    non_first_fragment: bool,
    offset: usize,
}

pub fn parse(frame: &[u8]) -> Parsed {
    let c = Cursor(frame);
    let (ip, l3, pppoe) = match link(&c) {
        Ok(found) => found,
        Err(parsed) => return parsed,
    };
    let family = ip.family();
    let malformed = || Parsed::Malformed {
        family,
        source: ip.source(&c, l3),
    };
    let l4 = match ip {
        Ip::V4 => ipv4(&c, l3),
        Ip::V6 => ipv6(&c, l3),
    };
    // A valid IP header always contains both addresses.
    let (Some(l4), Some(source), Some(destination)) =
        (l4, ip.source(&c, l3), ip.destination(&c, l3))
    else {
        return malformed();
    };
    if l4.protocol != IPPROTO_TCP {
        return Parsed::Pass {
            family,
            reason: Reason::NotTcp,
        };
    }
    if l4.non_first_fragment {
        return Parsed::Pass {
            family,
            reason: Reason::Fragment,
        };
    }
    // Source and destination ports must both be present; nothing after them is read.
    let Some([_, _, dport_hi, dport_lo]) = c.bytes::<4>(l4.offset) else {
        return malformed();
    };
    Parsed::Tcp {
        family,
        source,
        destination,
        dport: u16::from_be_bytes([dport_hi, dport_lo]),
        segment: Segment {
            l3,
            l4: l4.offset,
            pppoe,
            flags: c.u8(l4.offset + 13),
            data_offset: c.u8(l4.offset + 12).map(|byte| byte >> 4),
            full_header: c.has(l4.offset, TCP_MIN_HEADER_LEN),
        },
    }
}

/// Step 1: find the IP header behind Ethernet, up to two VLAN tags and PPPoE; returns the
/// IP version, its offset and the offset of the PPPoE header if there is one.
fn link(c: &Cursor) -> Result<(Ip, usize, Option<usize>), Parsed> {
    let malformed = Parsed::Malformed {
        family: Family::Other,
        source: None,
    };
    let not_ip = Parsed::Pass {
        family: Family::Other,
        reason: Reason::NotIp,
    };
    // Reading the EtherType needs the whole 14-byte header.
    let Some(mut ethertype) = c.u16(ETHERTYPE_OFFSET) else {
        return Err(malformed);
    };
    let mut offset = ETH_HEADER_LEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && is_vlan_tpid(ethertype) {
        // The inner EtherType is the tag's last two bytes, so reading it checks the tag.
        let Some(inner) = c.u16(offset + VLAN_TAG_LEN - 2) else {
            return Err(malformed);
        };
        ethertype = inner;
        offset += VLAN_TAG_LEN;
        tags += 1;
    }
    match ethertype {
        ETHERTYPE_IPV4 => Ok((Ip::V4, offset, None)),
        ETHERTYPE_IPV6 => Ok((Ip::V6, offset, None)),
        ETHERTYPE_PPPOE_SESSION => match c.u16(offset + PPPOE_HEADER_LEN - 2) {
            None => Err(malformed),
            Some(PPP_IPV4) => Ok((Ip::V4, offset + PPPOE_HEADER_LEN, Some(offset))),
            Some(PPP_IPV6) => Ok((Ip::V6, offset + PPPOE_HEADER_LEN, Some(offset))),
            Some(_) => Err(not_ip),
        },
        _ => Err(not_ip),
    }
}

/// Step 2, IPv4. `None`: malformed. Total length is deliberately not checked.
fn ipv4(c: &Cursor, l3: usize) -> Option<L4> {
    if !c.has(l3, IPV4_MIN_HEADER_LEN) {
        return None;
    }
    let version_ihl = c.u8(l3)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HEADER_LEN || !c.has(l3, header_len) {
        return None;
    }
    Some(L4 {
        protocol: c.u8(l3 + 9)?,
        non_first_fragment: c.u16(l3 + 6)? & 0x1fff > 0,
        offset: l3 + header_len,
    })
}

/// Step 2, IPv6, including the bounded extension-header walk. `None`: malformed.
fn ipv6(c: &Cursor, l3: usize) -> Option<L4> {
    if !c.has(l3, IPV6_HEADER_LEN) || c.u8(l3)? >> 4 != 6 {
        return None;
    }
    let mut next = c.u8(l3 + 6)?;
    let mut offset = l3 + IPV6_HEADER_LEN;
    let mut walked = 0;
    while is_ipv6_extension(next) {
        // The kernel's walk is bounded; a ninth header would escape it.
        if walked == MAX_IPV6_EXTENSION_HEADERS {
            return None;
        }
        walked += 1;
        let len = match next {
            IPV6_FRAGMENT => {
                if !c.has(offset, IPV6_FRAGMENT_HEADER_LEN) {
                    return None;
                }
                if c.u16(offset + 2)? >> 3 > 0 {
                    // A non-first fragment carries no L4 header; its protocol is here.
                    return Some(L4 {
                        protocol: c.u8(offset)?,
                        non_first_fragment: true,
                        offset: offset + IPV6_FRAGMENT_HEADER_LEN,
                    });
                }
                IPV6_FRAGMENT_HEADER_LEN
            }
            _ => ipv6_extension_len(next, c.u8(offset + 1)?),
        };
        if !c.has(offset, len) {
            return None;
        }
        next = c.u8(offset)?;
        offset += len;
    }
    Some(L4 {
        protocol: next,
        non_first_fragment: false,
        offset,
    })
}
