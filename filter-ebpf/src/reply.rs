//! `action: reject`: turns a blocked SYN into the TCP RST+ACK that answers it, in place,
//! for XDP_TX. The link layer (VLAN tags, PPPoE) is kept; IP options and IPv6 extension
//! headers are not copied into the reply.

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use filter_common::{
    Family,
    checksum::{fold, sum_words},
    wire::{
        IPPROTO_TCP, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN as IPV6_LEN, TCP_ACK, TCP_FIN,
        TCP_MIN_HEADER_LEN, TCP_RST,
    },
};

use crate::{
    cursor::Cursor,
    decision::Decision,
    headers::{EthernetHeader, Ipv4Header, Ipv6Header, PppoeSession, TcpHeader, join, split},
};

// The reply carries no IP options, extension headers or TCP options.
const IPV4_HEADER_LEN: u16 = IPV4_MIN_HEADER_LEN as u16;
const IPV6_HEADER_LEN: u16 = IPV6_LEN as u16;
const TCP_HEADER_LEN: u16 = TCP_MIN_HEADER_LEN as u16;
const REPLY_TTL: u8 = 64;
const IPV4_DONT_FRAGMENT: u16 = 0x4000;

/// What the reply needs from the segment it answers, read before anything is written.
struct Segment {
    source_port: u16,
    destination_port: u16,
    /// The acknowledgment number, host order: sequence + SEG.LEN.
    acknowledgment: u32,
}

/// Rewrites the frame into the reset; false if it could not (then it must be dropped).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, decision: &Decision) -> bool {
    let cur = Cursor::new(ctx);
    let (l3, l4) = (decision.l3, decision.l4);
    // First of all checks: the compiler drops a bounds check implied by an earlier one,
    // which the verifier cannot follow.
    let Some(ethernet) = cur.header_mut::<EthernetHeader>(0) else {
        return false;
    };
    let Some(tcp) = cur.header::<TcpHeader>(l4) else {
        return false;
    };
    let header_len = ((tcp.offset_flags[0] >> 4) as u32) * 4;
    let flags = tcp.offset_flags[1];
    let sequence = u32::from_be(join(tcp.sequence));
    let mut segment = Segment {
        source_port: tcp.source,
        destination_port: tcp.destination,
        acknowledgment: 0,
    };
    // The IP payload length as its header says, less what precedes the TCP header in it.
    let ip_payload = match decision.family {
        Family::Ipv4 => {
            let Some(ip) = cur.header::<Ipv4Header>(l3) else {
                return false;
            };
            let header = ((ip.version_ihl & 0x0f) as u32) * 4;
            (u16::from_be(ip.total_length) as u32).saturating_sub(header)
        }
        Family::Ipv6 => {
            let Some(ip) = cur.header::<Ipv6Header>(l3) else {
                return false;
            };
            let extensions = (l4 - l3) as u32 - IPV6_HEADER_LEN as u32;
            (u16::from_be(ip.payload_length) as u32).saturating_sub(extensions)
        }
        Family::Other => return false,
    };
    let payload = ip_payload.saturating_sub(header_len);
    let sequence_length = 1 + (flags & TCP_FIN != 0) as u32 + payload;
    segment.acknowledgment = sequence.wrapping_add(sequence_length);

    // SAFETY: inside the frame (checked above); the program owns the frame.
    unsafe {
        core::mem::swap(&mut (*ethernet).destination, &mut (*ethernet).source);
    }
    let (ip_len, pseudo_sum) = match decision.family {
        Family::Ipv4 => match write_ipv4(&cur, l3) {
            Some(sum) => (IPV4_HEADER_LEN, sum),
            None => return false,
        },
        _ => match write_ipv6(&cur, l3) {
            Some(sum) => (IPV6_HEADER_LEN, sum),
            None => return false,
        },
    };
    let reply_ip_len = ip_len + TCP_HEADER_LEN;
    if decision.pppoe != 0 {
        let Some(pppoe) = cur.header_mut::<PppoeSession>(decision.pppoe) else {
            return false;
        };
        // SAFETY: as above. The PPPoE length covers the PPP protocol field and the packet.
        unsafe { (*pppoe).length = (2 + reply_ip_len).to_be() };
    }
    if !write_tcp(&cur, l3 + ip_len as usize, &segment, pseudo_sum) {
        return false;
    }
    let reply_len = (l3 + reply_ip_len as usize) as i32;
    // Over all buffers: shrinking a multi-buffer frame releases its fragments first, and
    // the reply, inside the first buffer, is then a single-buffer frame.
    let frame_len = crate::act::frame_len(ctx) as i32;
    // SAFETY: shrinking by what follows the reply; no packet pointer is used afterwards.
    frame_len == reply_len || unsafe { bpf_xdp_adjust_tail(ctx.ctx, reply_len - frame_len) } == 0
}

/// Writes the reply's IPv4 header (addresses swapped) over the original; returns the
/// TCP pseudo-header's address sum.
#[inline(always)]
fn write_ipv4(cur: &Cursor, l3: usize) -> Option<u32> {
    let ip = cur.header_mut::<Ipv4Header>(l3)?;
    // SAFETY: the whole header is inside the frame.
    unsafe {
        let source = (*ip).destination;
        let destination = (*ip).source;
        let total_length = IPV4_HEADER_LEN + TCP_HEADER_LEN;
        (*ip).version_ihl = 0x45;
        (*ip).tos = 0;
        (*ip).total_length = total_length.to_be();
        (*ip).id = 0;
        (*ip).fragment = IPV4_DONT_FRAGMENT.to_be();
        (*ip).ttl = REPLY_TTL;
        (*ip).protocol = IPPROTO_TCP;
        (*ip).source = source;
        (*ip).destination = destination;
        let addresses = sum_words(&source) + sum_words(&destination);
        let header_sum = addresses
            + 0x4500u16.to_be() as u32
            + total_length.to_be() as u32
            + IPV4_DONT_FRAGMENT.to_be() as u32
            + (((REPLY_TTL as u16) << 8) | IPPROTO_TCP as u16).to_be() as u32;
        (*ip).checksum = fold(header_sum);
        Some(addresses)
    }
}

/// As `write_ipv4`, for IPv6.
#[inline(always)]
fn write_ipv6(cur: &Cursor, l3: usize) -> Option<u32> {
    let ip = cur.header_mut::<Ipv6Header>(l3)?;
    // SAFETY: the whole header is inside the frame.
    unsafe {
        let source = (*ip).destination;
        let destination = (*ip).source;
        (*ip).version_class_flow = [0x6000u16.to_be(), 0];
        (*ip).payload_length = TCP_HEADER_LEN.to_be();
        (*ip).next_header = IPPROTO_TCP;
        (*ip).hop_limit = REPLY_TTL;
        (*ip).source = source;
        (*ip).destination = destination;
        Some(sum_words(&source) + sum_words(&destination))
    }
}

#[inline(always)]
fn write_tcp(cur: &Cursor, offset: usize, segment: &Segment, address_sum: u32) -> bool {
    let Some(tcp) = cur.header_mut::<TcpHeader>(offset) else {
        return false;
    };
    let acknowledgment = split(segment.acknowledgment.to_be());
    let offset_flags = [5 << 4, TCP_RST | TCP_ACK];
    let sum = address_sum
        + (IPPROTO_TCP as u16).to_be() as u32
        + TCP_HEADER_LEN.to_be() as u32
        + segment.source_port as u32
        + segment.destination_port as u32
        + sum_words(&acknowledgment)
        + u16::from_ne_bytes(offset_flags) as u32;
    // SAFETY: the whole header is inside the frame; the fields read from the original
    // segment were copied into `segment` before anything was written.
    unsafe {
        (*tcp).source = segment.destination_port;
        (*tcp).destination = segment.source_port;
        (*tcp).sequence = [0, 0];
        (*tcp).acknowledgment = acknowledgment;
        (*tcp).offset_flags = offset_flags;
        (*tcp).window = 0;
        (*tcp).urgent = 0;
        (*tcp).checksum = fold(sum);
    }
    true
}
