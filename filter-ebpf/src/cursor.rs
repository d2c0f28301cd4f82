//! Header parsing over the packet, every read bounds-checked against `data_end`.
//! Shapes the frame into what `decide` needs: family, protocol, ports, address offsets.

use aya_ebpf::programs::XdpContext;
use filter_common::Family;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_PPPOE_SESSION: u16 = 0x8864;
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Linear XDP data never exceeds a page; larger offsets are truncation by definition.
/// The explicit bound keeps every offset range known to the verifier.
const MAX_OFFSET: usize = 4096;

pub const IPPROTO_TCP: u8 = 6;

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

/// Bounds-checked access to the packet.
pub struct Cursor<'a> {
    ctx: &'a XdpContext,
}

// Header layouts. Multi-byte fields are network order; all are 2-byte aligned, which the
// packet is (XDP data starts aligned, and every header length is even), so a field read is
// one load, not a byte-by-byte copy.
#[repr(C)]
pub struct EthernetHeader {
    pub destination: [u16; 3],
    pub source: [u16; 3],
    ethertype: u16,
}

#[repr(C)]
struct VlanTag {
    tci: u16,
    ethertype: u16,
}

#[repr(C)]
pub struct PppoeSession {
    version_type: u8,
    code: u8,
    session: u16,
    pub length: u16,
    protocol: u16,
}

#[repr(C)]
pub struct Ipv4Header {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_length: u16,
    pub id: u16,
    pub fragment: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: u16,
    pub source: [u16; 2],
    pub destination: [u16; 2],
}

#[repr(C)]
pub struct Ipv6Header {
    pub version_class_flow: [u16; 2],
    pub payload_length: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub source: [u16; 8],
    pub destination: [u16; 8],
}

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The fixed 20-byte TCP header; 32-bit fields as two words to keep 2-byte alignment.
#[repr(C)]
pub struct TcpHeader {
    pub source: u16,
    pub destination: u16,
    pub sequence: [u16; 2],
    pub acknowledgment: [u16; 2],
    /// Data offset (high nibble of byte 0) and flags (byte 1).
    pub offset_flags: [u8; 2],
    pub window: u16,
    pub checksum: u16,
    pub urgent: u16,
}

#[repr(C)]
struct ExtensionHeader {
    next_header: u8,
    length: u8,
    /// The fragment header's offset and flags; other headers' first option bytes.
    fragment: u16,
}

#[repr(C)]
struct TcpPorts {
    source: u16,
    destination: u16,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        Cursor { ctx }
    }

    /// True when `len` bytes starting at `offset` lie inside the frame.
    #[inline(always)]
    fn has(&self, offset: usize, len: usize) -> bool {
        offset <= MAX_OFFSET && self.ctx.data() + offset + len <= self.ctx.data_end()
    }

    /// The header of type `T` at `offset`, if all of it is inside the frame.
    #[inline(always)]
    pub fn header<T>(&self, offset: usize) -> Option<&T> {
        if !self.has(offset, core::mem::size_of::<T>()) {
            return None;
        }
        // SAFETY: the whole header lies inside the packet, which outlives `self`; headers
        // are plain bytes with 2-byte alignment (see above).
        Some(unsafe { &*((self.ctx.data() + offset) as *const T) })
    }

    /// The header of type `T` at `offset` for writing, if all of it is inside the frame.
    #[inline(always)]
    pub fn header_mut<T>(&self, offset: usize) -> Option<*mut T> {
        if !self.has(offset, core::mem::size_of::<T>()) {
            return None;
        }
        Some((self.ctx.data() + offset) as *mut T)
    }

    /// The TCP flags byte of a segment starting at `l4`, if it is inside the frame.
    #[inline(always)]
    pub fn tcp_flags(&self, l4: usize) -> Option<u8> {
        self.header::<[u8; 2]>(l4 + 12).map(|bytes| bytes[1])
    }

    /// The TCP destination port of a segment starting at `l4`.
    #[inline(always)]
    pub fn tcp_destination_port(&self, l4: usize) -> Option<u16> {
        self.header::<TcpPorts>(l4)
            .map(|ports| u16::from_be(ports.destination))
    }
}

#[inline(always)]
fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(ethertype, 0x8100 | 0x88a8 | 0x9100)
}

#[inline(always)]
pub fn parse(cur: &Cursor) -> Result<Packet, Stop> {
    const LINK_MALFORMED: Stop = Stop::Malformed {
        family: Family::Other,
        l3: None,
    };
    let ethernet = cur.header::<EthernetHeader>(0).ok_or(LINK_MALFORMED)?;
    let mut ethertype = u16::from_be(ethernet.ethertype);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan_tpid(ethertype) {
            break;
        }
        let tag = cur.header::<VlanTag>(offset).ok_or(LINK_MALFORMED)?;
        ethertype = u16::from_be(tag.ethertype);
        offset += 4;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(cur, 0, offset),
        ETH_P_IPV6 => ipv6(cur, 0, offset),
        ETH_P_PPPOE_SESSION => {
            let pppoe = cur.header::<PppoeSession>(offset).ok_or(LINK_MALFORMED)?;
            match u16::from_be(pppoe.protocol) {
                PPP_IPV4 => ipv4(cur, offset, offset + 8),
                PPP_IPV6 => ipv6(cur, offset, offset + 8),
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
    if ip.version_ihl >> 4 != 4 || header_len < 20 || !cur.has(l3, header_len) {
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
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 51 | 60)
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
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next_header) {
            break;
        }
        // Every extension header starts with next-header and length bytes; the fragment
        // header's offset follows them.
        let len = if next_header == 44 {
            let fragment = cur.header::<ExtensionHeader>(offset).ok_or(malformed)?;
            if !cur.has(offset, 8) {
                return Err(malformed);
            }
            if u16::from_be(fragment.fragment) >> 3 != 0 {
                return Ok(Packet {
                    family: Family::Ipv6,
                    pppoe,
                    l3,
                    protocol: fragment.next_header,
                    non_first_fragment: true,
                    l4: offset + 8,
                });
            }
            8
        } else {
            let Some(head) = cur.header::<[u8; 2]>(offset) else {
                return Err(malformed);
            };
            let len = if next_header == 51 {
                (head[1] as usize + 2) * 4
            } else {
                (head[1] as usize + 1) * 8
            };
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
