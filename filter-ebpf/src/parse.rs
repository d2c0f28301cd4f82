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

impl<'a> Cursor<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        Cursor { ctx }
    }

    /// True when `len` bytes starting at `offset` lie inside the frame.
    #[inline(always)]
    pub fn has(&self, offset: usize, len: usize) -> bool {
        offset <= MAX_OFFSET && self.ctx.data() + offset + len <= self.ctx.data_end()
    }

    #[inline(always)]
    fn ptr<T>(&self, offset: usize) -> Option<*const T> {
        let start = self.ctx.data();
        if offset > MAX_OFFSET || start + offset + core::mem::size_of::<T>() > self.ctx.data_end() {
            return None;
        }
        Some((start + offset) as *const T)
    }

    #[inline(always)]
    pub fn u8(&self, offset: usize) -> Option<u8> {
        // SAFETY: `ptr` checked that the byte is inside the packet.
        self.ptr::<u8>(offset).map(|p| unsafe { *p })
    }

    #[inline(always)]
    pub fn be16(&self, offset: usize) -> Option<u16> {
        // SAFETY: bounds checked by `ptr`; the read is unaligned-safe.
        self.ptr::<[u8; 2]>(offset)
            .map(|p| u16::from_be_bytes(unsafe { p.read_unaligned() }))
    }

    #[inline(always)]
    pub fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // SAFETY: bounds checked by `ptr`.
        self.ptr::<[u8; N]>(offset)
            .map(|p| unsafe { p.read_unaligned() })
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
    let mut ethertype = cur.be16(ETH_HLEN - 2).ok_or(LINK_MALFORMED)?;
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan_tpid(ethertype) {
            break;
        }
        ethertype = cur.be16(offset + 2).ok_or(LINK_MALFORMED)?;
        offset += 4;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(cur, offset),
        ETH_P_IPV6 => ipv6(cur, offset),
        ETH_P_PPPOE_SESSION => match cur.be16(offset + 6).ok_or(LINK_MALFORMED)? {
            PPP_IPV4 => ipv4(cur, offset + 8),
            PPP_IPV6 => ipv6(cur, offset + 8),
            _ => Err(Stop::NotIp),
        },
        _ => Err(Stop::NotIp),
    }
}

#[inline(always)]
fn ipv4(cur: &Cursor, l3: usize) -> Result<Packet, Stop> {
    let malformed = Stop::Malformed {
        family: Family::Ipv4,
        l3: Some(l3),
    };
    if !cur.has(l3, 20) {
        return Err(malformed);
    }
    let version_ihl = cur.u8(l3).ok_or(malformed)?;
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 || !cur.has(l3, header_len) {
        return Err(malformed);
    }
    let fragment_offset = cur.be16(l3 + 6).ok_or(malformed)? & 0x1fff;
    Ok(Packet {
        family: Family::Ipv4,
        l3,
        protocol: cur.u8(l3 + 9).ok_or(malformed)?,
        non_first_fragment: fragment_offset != 0,
        l4: l3 + header_len,
    })
}

#[inline(always)]
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 51 | 60)
}

#[inline(always)]
fn ipv6(cur: &Cursor, l3: usize) -> Result<Packet, Stop> {
    let malformed = Stop::Malformed {
        family: Family::Ipv6,
        l3: Some(l3),
    };
    if !cur.has(l3, 40) {
        return Err(malformed);
    }
    if cur.u8(l3).ok_or(malformed)? >> 4 != 6 {
        return Err(malformed);
    }
    let mut next_header = cur.u8(l3 + 6).ok_or(malformed)?;
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match next_header {
            44 => {
                let Some(fragment) = cur.bytes::<4>(offset) else {
                    return Err(malformed);
                };
                if !cur.has(offset, 8) {
                    return Err(malformed);
                }
                if u16::from_be_bytes([fragment[2], fragment[3]]) >> 3 != 0 {
                    return Ok(Packet {
                        family: Family::Ipv6,
                        l3,
                        protocol: fragment[0],
                        non_first_fragment: true,
                        l4: offset + 8,
                    });
                }
                8
            }
            51 | 0 | 43 | 60 => {
                let Some(head) = cur.bytes::<2>(offset) else {
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
            }
            _ => break,
        };
        next_header = cur.u8(offset).ok_or(malformed)?;
        offset += len;
    }
    if is_ipv6_extension(next_header) {
        return Err(malformed);
    }
    Ok(Packet {
        family: Family::Ipv6,
        l3,
        protocol: next_header,
        non_first_fragment: false,
        l4: offset,
    })
}
