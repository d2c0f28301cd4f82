//! Header layouts as they lie in the frame. Multi-byte fields are network order; all are
//! 2-byte aligned, which the packet is (XDP data starts aligned, and every header length
//! is even), so a field read is one load, not a byte-by-byte copy.

#[repr(C)]
pub struct EthernetHeader {
    pub destination: [u16; 3],
    pub source: [u16; 3],
    pub ethertype: u16,
}

#[repr(C)]
pub struct VlanTag {
    pub tci: u16,
    pub ethertype: u16,
}

#[repr(C)]
pub struct PppoeSession {
    pub version_type: u8,
    pub code: u8,
    pub session: u16,
    pub length: u16,
    pub protocol: u16,
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

/// The first bytes every IPv6 extension header starts with.
#[repr(C)]
pub struct ExtensionHeader {
    pub next_header: u8,
    pub length: u8,
    /// The fragment header's offset and flags; other headers' first option bytes.
    pub fragment: u16,
}

#[repr(C)]
pub struct TcpPorts {
    pub source: u16,
    pub destination: u16,
}

/// Addresses are read as 16-bit words; the tries are keyed by the same bytes.
#[inline(always)]
pub fn v4_bytes(words: [u16; 2]) -> [u8; 4] {
    // SAFETY: same size, both plain integers; the byte order is kept as read.
    unsafe { core::mem::transmute(words) }
}

#[inline(always)]
pub fn v6_bytes(words: [u16; 8]) -> [u8; 16] {
    // SAFETY: as above.
    unsafe { core::mem::transmute(words) }
}

/// Two network-order words as one native u32 of the same bytes.
#[inline(always)]
pub fn join(words: [u16; 2]) -> u32 {
    // SAFETY: same size, plain integers; byte order kept as read.
    unsafe { core::mem::transmute(words) }
}

#[inline(always)]
pub fn split(value: u32) -> [u16; 2] {
    // SAFETY: as above.
    unsafe { core::mem::transmute(value) }
}
