//! Header parsing (semantics steps 1 to 4): shapes the frame into what `decide` needs:
//! family, protocol, fragment, and the offsets of the PPPoE, IP and TCP headers.

use filter_common::{
    Family,
    wire::{
        ETH_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_PPPOE_SESSION,
        IPV4_MIN_HEADER_LEN, IPV6_FRAGMENT, IPV6_FRAGMENT_HEADER_LEN, IPV6_HEADER_LEN,
        MAX_IPV6_EXTENSION_HEADERS, MAX_VLAN_TAGS, PPP_IPV4, PPP_IPV6, PPPOE_HEADER_LEN,
        VLAN_TAG_LEN, ipv6_extension_len, is_ipv6_extension, is_vlan_tpid,
    },
};

use crate::{
    cursor::Cursor,
    headers::{EthernetHeader, ExtensionHeader, Ipv4Header, Ipv6Header, PppoeSession, VlanTag},
};

/// A frame whose headers could be read up to the TCP ports.
pub struct Packet {
    pub family: Family,
    /// Offset of the PPPoE session header, 0 when there is none.
    pub pppoe: usize,
    pub l3: usize,
    pub protocol: u8,
    pub non_first_fragment: bool,
    pub l4: usize,
}

/// Why parsing stopped before a judgeable packet.
#[derive(Clone, Copy)]
pub enum Stop {
    NotIp,
    /// Truncated or invalid headers. `l3` is set once the IP header's position is known,
    /// so the source address can still be judged.
    Malformed {
        family: Family,
        l3: Option<usize>,
    },
}

#[inline(always)]
pub fn parse(cur: &Cursor) -> Result<Packet, Stop> {
    const LINK_MALFORMED: Stop = Stop::Malformed {
        family: Family::Other,
        l3: None,
    };
    let ethernet = cur.header::<EthernetHeader>(0).ok_or(LINK_MALFORMED)?;
    let mut ethertype = u16::from_be(ethernet.ethertype);
    let mut offset = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan_tpid(ethertype) {
            break;
        }
        let tag = cur.header::<VlanTag>(offset).ok_or(LINK_MALFORMED)?;
        ethertype = u16::from_be(tag.ethertype);
        offset += VLAN_TAG_LEN;
    }
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(cur, 0, offset),
        ETHERTYPE_IPV6 => ipv6(cur, 0, offset),
        ETHERTYPE_PPPOE_SESSION => {
            let pppoe = cur.header::<PppoeSession>(offset).ok_or(LINK_MALFORMED)?;
            match u16::from_be(pppoe.protocol) {
                PPP_IPV4 => ipv4(cur, offset, offset + PPPOE_HEADER_LEN),
                PPP_IPV6 => ipv6(cur, offset, offset + PPPOE_HEADER_LEN),
                _ => Err(Stop::NotIp),
            }
        }
        _ => Err(Stop::NotIp),
    }
}

#[inline(always)]
fn ipv4(cur: &Cursor, pppoe: usize, l3: usize) -> Result<Packet, Stop> {
    let malformed = Stop::Malformed {
        family: Family::Ipv4,
        l3: Some(l3),
    };
    let ip = cur.header::<Ipv4Header>(l3).ok_or(malformed)?;
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4 || header_len < IPV4_MIN_HEADER_LEN || !cur.has(l3, header_len) {
        return Err(malformed);
    }
    Ok(Packet {
        family: Family::Ipv4,
        pppoe,
        l3,
        protocol: ip.protocol,
        non_first_fragment: u16::from_be(ip.fragment) & 0x1fff != 0,
        l4: l3 + header_len,
    })
}

#[inline(always)]
fn ipv6(cur: &Cursor, pppoe: usize, l3: usize) -> Result<Packet, Stop> {
    let malformed = Stop::Malformed {
        family: Family::Ipv6,
        l3: Some(l3),
    };
    let ip = cur.header::<Ipv6Header>(l3).ok_or(malformed)?;
    if (u16::from_be(ip.version_class_flow[0]) >> 12) != 6 {
        return Err(malformed);
    }
    let mut next_header = ip.next_header;
    let mut offset = l3 + IPV6_HEADER_LEN;
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        if !is_ipv6_extension(next_header) {
            break;
        }
        // Every extension header starts with next-header and length bytes; the fragment
        // header's offset follows them.
        let len = if next_header == IPV6_FRAGMENT {
            let fragment = cur.header::<ExtensionHeader>(offset).ok_or(malformed)?;
            if !cur.has(offset, IPV6_FRAGMENT_HEADER_LEN) {
                return Err(malformed);
            }
            if u16::from_be(fragment.fragment) >> 3 != 0 {
                return Ok(Packet {
                    family: Family::Ipv6,
                    pppoe,
                    l3,
                    protocol: fragment.next_header,
                    non_first_fragment: true,
                    l4: offset + IPV6_FRAGMENT_HEADER_LEN,
                });
            }
            IPV6_FRAGMENT_HEADER_LEN
        } else {
            let Some(head) = cur.header::<[u8; 2]>(offset) else {
                return Err(malformed);
            };
            let len = ipv6_extension_len(next_header, head[1]);
            if !cur.has(offset, len) {
                return Err(malformed);
            }
            len
        };
        next_header = cur.header::<[u8; 1]>(offset).ok_or(malformed)?[0];
        offset += len;
    }
    if is_ipv6_extension(next_header) {
        return Err(malformed);
    }
    Ok(Packet {
        family: Family::Ipv6,
        pppoe,
        l3,
        protocol: next_header,
        non_first_fragment: false,
        l4: offset,
    })
}
