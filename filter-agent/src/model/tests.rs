//! One test per row of `docs/semantics.md`, on hand-built frames so every byte is explicit.

use std::borrow::Borrow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter_common::{
    Action, Config, FLAG_MONITOR, Family, Reason, Smtp, SourceKey, SourceRule, Verdict,
    wire::{
        ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_PPPOE_SESSION, IPPROTO_TCP, IPPROTO_UDP,
        IPV6_NO_NEXT_HEADER,
    },
};
use ipnet::IpNet;

use super::{
    Decision, Model, RelayLimiter, judge_flow, judge_frame, lookup_relay, lookup_source, reply_to,
};
use crate::image::MapImage;

// ---- policy -------------------------------------------------------------------------

const BLOCK_GROUP: u32 = 1;
const EXEMPT_GROUP: u32 = 2;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn block(group: u32) -> SourceRule {
    SourceRule::new(group, Smtp::Block)
}

fn allow(group: u32) -> SourceRule {
    SourceRule::new(group, Smtp::Allow)
}

/// Ports 25 and 587; a blocked /8 and /32 with an exempt /16 and /48 inside; one relay each.
fn image() -> MapImage {
    let mut config = Config::empty();
    config.set_port(25);
    config.set_port(587);
    let mut image = MapImage::new(config);
    image.insert_source(net("10.0.0.0/8"), block(BLOCK_GROUP));
    image.insert_source(net("10.1.0.0/16"), allow(EXEMPT_GROUP));
    image.insert_source(net("2001:db8::/32"), block(BLOCK_GROUP));
    image.insert_source(net("2001:db8:1::/48"), allow(EXEMPT_GROUP));
    image
        .set_relays(&[net("203.0.113.0/24"), net("2001:db8:face::/48")])
        .unwrap();
    image
}

fn monitor_image() -> MapImage {
    let mut image = image();
    image.config.flags |= FLAG_MONITOR;
    image
}

fn blocked4() -> Ipv4Addr {
    v4("10.9.9.9")
}
fn exempt4() -> Ipv4Addr {
    v4("10.1.2.3")
}
fn unmanaged4() -> Ipv4Addr {
    v4("192.0.2.1")
}
fn dst4() -> Ipv4Addr {
    v4("198.51.100.7")
}
fn relay4() -> Ipv4Addr {
    v4("203.0.113.5")
}
fn blocked6() -> Ipv6Addr {
    v6("2001:db8:9::9")
}
fn exempt6() -> Ipv6Addr {
    v6("2001:db8:1::3")
}
fn unmanaged6() -> Ipv6Addr {
    v6("fd00::1")
}
fn dst6() -> Ipv6Addr {
    v6("2606:4700::1")
}
fn relay6() -> Ipv6Addr {
    v6("2001:db8:face::25")
}

// ---- frame builders -----------------------------------------------------------------

/// Ethernet header with `types[0]` as EtherType; each further entry becomes a 4-byte tag
/// whose last two bytes are that type.
fn eth(types: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend(types[0].to_be_bytes());
    for t in &types[1..] {
        f.extend([0x00, 0x07]);
        f.extend(t.to_be_bytes());
    }
    f.extend(payload);
    f
}

fn pppoe(protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x11, 0x00, 0x12, 0x34];
    p.extend(((payload.len() + 2) as u16).to_be_bytes());
    p.extend(protocol.to_be_bytes());
    p.extend(payload);
    p
}

/// A TCP header with a zero sequence number, so a misaligned port read sees port 0.
fn tcp(dport: u16) -> Vec<u8> {
    let mut t = vec![0; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t
}

fn udp(dport: u16) -> Vec<u8> {
    let mut u = vec![0; 8];
    u[0..2].copy_from_slice(&40000u16.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u
}

/// IPv4 header with `option_words` 4-byte words of NOP options and the given
/// flags/fragment-offset word.
fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    option_words: u8,
    frag_word: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 5 + option_words;
    let mut p = vec![0x40 | ihl, 0];
    p.extend(((usize::from(ihl) * 4 + payload.len()) as u16).to_be_bytes());
    p.extend([0x12, 0x34]);
    p.extend(frag_word.to_be_bytes());
    p.extend([64, protocol, 0, 0]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(vec![1; usize::from(option_words) * 4]);
    p.extend(payload);
    p
}

fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    ipv4_packet(src, dst, IPPROTO_TCP, 0, 0, &tcp(dport))
}

fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, next: u8, rest: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend((rest.len() as u16).to_be_bytes());
    p.extend([next, 64]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(rest);
    p
}

fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    ipv6_packet(src, dst, IPPROTO_TCP, &tcp(dport))
}

fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend((offset << 3 | u16::from(more)).to_be_bytes());
    h.extend([0, 0, 0x12, 0x34]);
    h
}

/// An extension header of `kind` with length byte 1: 12 bytes for AH ((1+2)*4), 16 for
/// the others ((1+1)*8), so applying the wrong rule misaligns the port read.
fn ext(kind: u8, next: u8) -> Vec<u8> {
    if kind == 44 {
        return frag6(next, 0, true);
    }
    let mut h = vec![0; if kind == 51 { 12 } else { 16 }];
    h[0] = next;
    h[1] = 1;
    h
}

/// IPv6 packet with the chain of extension headers `kinds`, then `protocol` and `payload`.
fn ipv6_chain(src: Ipv6Addr, dst: Ipv6Addr, kinds: &[u8], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut rest = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        rest.extend(ext(*kind, kinds.get(i + 1).copied().unwrap_or(protocol)));
    }
    rest.extend(payload);
    ipv6_packet(src, dst, kinds.first().copied().unwrap_or(protocol), &rest)
}

// ---- assertions ---------------------------------------------------------------------

#[track_caller]
fn check(d: impl Borrow<Decision>, verdict: Verdict, reason: Reason, family: Family, group: u32) {
    let d = d.borrow();
    assert_eq!(
        (d.verdict, d.reason, d.family, d.group),
        (verdict, reason, family, group),
        "{d:?}"
    );
    assert_eq!(d.source_prefix.is_some(), group != 0, "{d:?}");
    assert_eq!(d.relay_prefix.is_some(), reason == Reason::Relay, "{d:?}");
}

fn judge(frame: &[u8]) -> Decision {
    judge_frame(&image(), frame)
}

#[track_caller]
fn check_blocked(frame: &[u8], family: Family) {
    check(
        judge(frame),
        Verdict::Drop,
        Reason::Blocked,
        family,
        BLOCK_GROUP,
    );
}

/// A malformed frame whose source lies inside it, built for each kind of source.
#[track_caller]
fn check_malformed(family: Family, build: impl Fn(IpAddr) -> Vec<u8>) {
    let (blocked, exempt, unmanaged): (IpAddr, IpAddr, IpAddr) = match family {
        Family::Ipv4 => (blocked4().into(), exempt4().into(), unmanaged4().into()),
        _ => (blocked6().into(), exempt6().into(), unmanaged6().into()),
    };
    let (drop, pass) = (Verdict::Drop, Verdict::Pass);
    let m = Reason::Malformed;
    check(judge(&build(blocked)), drop, m, family, BLOCK_GROUP);
    check(judge(&build(exempt)), pass, m, family, EXEMPT_GROUP);
    check(judge(&build(unmanaged)), pass, m, family, 0);
    let monitored = judge_frame(&monitor_image(), &build(blocked));
    check(monitored, pass, Reason::Monitored, family, BLOCK_GROUP);
}

#[track_caller]
fn check_malformed4(build: impl Fn(Ipv4Addr) -> Vec<u8>) {
    check_malformed(Family::Ipv4, |a| match a {
        IpAddr::V4(a) => build(a),
        IpAddr::V6(_) => unreachable!(),
    });
}

#[track_caller]
fn check_malformed6(build: impl Fn(Ipv6Addr) -> Vec<u8>) {
    check_malformed(Family::Ipv6, |a| match a {
        IpAddr::V6(a) => build(a),
        IpAddr::V4(_) => unreachable!(),
    });
}

/// Malformed with no usable source: `pass malformed`, no group, even from a blocked prefix.
#[track_caller]
fn check_malformed_sourceless(frame: &[u8], family: Family) {
    for image in [image(), monitor_image()] {
        let d = judge_frame(&image, frame);
        check(d, Verdict::Pass, Reason::Malformed, family, 0);
    }
}

#[track_caller]
fn check_pass(frame: &[u8], reason: Reason, family: Family) {
    check(judge(frame), Verdict::Pass, reason, family, 0);
}

// ---- 1. link layer ------------------------------------------------------------------

#[test]
fn shorter_than_ethernet_is_malformed_without_family() {
    for len in [0, 1, 13] {
        check_malformed_sourceless(
            &eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 25))[..len],
            Family::Other,
        );
    }
}

#[test]
fn plain_ethernet() {
    check_blocked(
        &eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 25)),
        Family::Ipv4,
    );
    check_blocked(
        &eth(&[ETHERTYPE_IPV6], &tcp6(blocked6(), dst6(), 25)),
        Family::Ipv6,
    );
}

#[test]
fn one_vlan_tag_of_each_tpid() {
    for tpid in [0x8100, 0x88a8, 0x9100] {
        check_blocked(
            &eth(&[tpid, ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 25)),
            Family::Ipv4,
        );
        check_blocked(
            &eth(&[tpid, ETHERTYPE_IPV6], &tcp6(blocked6(), dst6(), 25)),
            Family::Ipv6,
        );
    }
}

#[test]
fn qinq_with_each_tpid_pair() {
    for outer in [0x8100, 0x88a8, 0x9100] {
        for inner in [0x8100, 0x88a8, 0x9100] {
            let frame = eth(
                &[outer, inner, ETHERTYPE_IPV4],
                &tcp4(blocked4(), dst4(), 25),
            );
            check_blocked(&frame, Family::Ipv4);
            let frame = eth(
                &[outer, inner, ETHERTYPE_IPV6],
                &tcp6(blocked6(), dst6(), 25),
            );
            check_blocked(&frame, Family::Ipv6);
        }
    }
}

#[test]
fn third_vlan_tag_is_not_ip() {
    for third in [0x8100, 0x88a8, 0x9100] {
        let frame = eth(
            &[0x88a8, 0x8100, third, ETHERTYPE_IPV4],
            &tcp4(blocked4(), dst4(), 25),
        );
        check_pass(&frame, Reason::NotIp, Family::Other);
    }
}

#[test]
fn truncated_vlan_tag_is_malformed_without_family() {
    let one = eth(&[0x8100, ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 25));
    for len in 14..18 {
        check_malformed_sourceless(&one[..len], Family::Other);
    }
    let two = eth(
        &[0x88a8, 0x8100, ETHERTYPE_IPV4],
        &tcp4(blocked4(), dst4(), 25),
    );
    for len in 18..22 {
        check_malformed_sourceless(&two[..len], Family::Other);
    }
    // Exactly the tag and nothing more: the tag is complete, the IPv4 header is not.
    check_malformed_sourceless(&one[..18], Family::Ipv4);
}

#[test]
fn pppoe_session_ipv4_and_ipv6() {
    let frame = eth(
        &[ETHERTYPE_PPPOE_SESSION],
        &pppoe(0x0021, &tcp4(blocked4(), dst4(), 25)),
    );
    check_blocked(&frame, Family::Ipv4);
    let frame = eth(
        &[ETHERTYPE_PPPOE_SESSION],
        &pppoe(0x0057, &tcp6(blocked6(), dst6(), 25)),
    );
    check_blocked(&frame, Family::Ipv6);
    let frame = eth(
        &[0x8100, ETHERTYPE_PPPOE_SESSION],
        &pppoe(0x0021, &tcp4(blocked4(), dst4(), 25)),
    );
    check_blocked(&frame, Family::Ipv4);
}

#[test]
fn pppoe_header_fields_are_not_checked() {
    let mut session = pppoe(0x0021, &tcp4(blocked4(), dst4(), 25));
    session[..6].copy_from_slice(&[0xff; 6]);
    check_blocked(&eth(&[ETHERTYPE_PPPOE_SESSION], &session), Family::Ipv4);
}

#[test]
fn pppoe_non_ip_protocol_is_not_ip() {
    let frame = eth(
        &[ETHERTYPE_PPPOE_SESSION],
        &pppoe(0xc021, &tcp4(blocked4(), dst4(), 25)),
    );
    check_pass(&frame, Reason::NotIp, Family::Other);
}

#[test]
fn truncated_pppoe_is_malformed_without_family() {
    let frame = eth(
        &[ETHERTYPE_PPPOE_SESSION],
        &pppoe(0x0021, &tcp4(blocked4(), dst4(), 25)),
    );
    for len in 14..22 {
        check_malformed_sourceless(&frame[..len], Family::Other);
    }
    check_malformed_sourceless(&frame[..22], Family::Ipv4);
}

#[test]
fn pppoe_discovery_and_arp_are_not_ip() {
    for ethertype in [0x8863, 0x0806] {
        let frame = eth(&[ethertype], &tcp4(blocked4(), dst4(), 25));
        check_pass(&frame, Reason::NotIp, Family::Other);
    }
}

#[test]
fn family_follows_the_ethertype_not_the_version_nibble() {
    let frame = eth(&[ETHERTYPE_IPV4], &tcp6(blocked6(), dst6(), 25));
    assert_eq!(judge(&frame).family, Family::Ipv4);
    assert_eq!(judge(&frame).reason, Reason::Malformed);
    let frame = eth(&[ETHERTYPE_IPV6], &tcp4(blocked4(), dst4(), 25));
    assert_eq!(judge(&frame).family, Family::Ipv6);
    assert_eq!(judge(&frame).reason, Reason::Malformed);
}

// ---- 2. IPv4 header -----------------------------------------------------------------

#[test]
fn ipv4_options_every_ihl() {
    for words in 1..=10 {
        let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, words, 0, &tcp(25));
        check_blocked(&eth(&[ETHERTYPE_IPV4], &packet), Family::Ipv4);
    }
}

#[test]
fn ipv4_total_length_is_not_checked() {
    let mut packet = tcp4(blocked4(), dst4(), 25);
    packet[2..4].copy_from_slice(&[0, 0]);
    check_blocked(&eth(&[ETHERTYPE_IPV4], &packet), Family::Ipv4);
    packet[2..4].copy_from_slice(&[0xff, 0xff]);
    check_blocked(&eth(&[ETHERTYPE_IPV4], &packet), Family::Ipv4);
}

#[test]
fn ipv4_shorter_than_20_bytes() {
    // The source ends at byte 16: it is still looked up.
    check_malformed4(|src| eth(&[ETHERTYPE_IPV4], &tcp4(src, dst4(), 25)[..16]));
    check_malformed4(|src| eth(&[ETHERTYPE_IPV4], &tcp4(src, dst4(), 25)[..19]));
    for len in [0, 15] {
        let frame = eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 25)[..len]);
        check_malformed_sourceless(&frame, Family::Ipv4);
    }
}

#[test]
fn ipv4_bad_version() {
    for version in [0, 5, 6, 15] {
        check_malformed4(|src| {
            let mut packet = tcp4(src, dst4(), 25);
            packet[0] = version << 4 | 5;
            eth(&[ETHERTYPE_IPV4], &packet)
        });
    }
}

#[test]
fn ipv4_ihl_below_5() {
    for ihl in 0..5 {
        check_malformed4(|src| {
            let mut packet = tcp4(src, dst4(), 25);
            packet[0] = 0x40 | ihl;
            eth(&[ETHERTYPE_IPV4], &packet)
        });
    }
}

#[test]
fn ipv4_options_beyond_the_frame() {
    check_malformed4(|src| {
        let packet = ipv4_packet(src, dst4(), IPPROTO_TCP, 10, 0, &tcp(25));
        eth(&[ETHERTYPE_IPV4], &packet[..59])
    });
}

// ---- 2. IPv6 header and extension headers -------------------------------------------

#[test]
fn ipv6_shorter_than_40_bytes() {
    check_malformed6(|src| eth(&[ETHERTYPE_IPV6], &tcp6(src, dst6(), 25)[..24]));
    check_malformed6(|src| eth(&[ETHERTYPE_IPV6], &tcp6(src, dst6(), 25)[..39]));
    for len in [0, 23] {
        let frame = eth(&[ETHERTYPE_IPV6], &tcp6(blocked6(), dst6(), 25)[..len]);
        check_malformed_sourceless(&frame, Family::Ipv6);
    }
}

#[test]
fn ipv6_bad_version() {
    for version in [0, 4, 7, 15] {
        check_malformed6(|src| {
            let mut packet = tcp6(src, dst6(), 25);
            packet[0] = version << 4;
            eth(&[ETHERTYPE_IPV6], &packet)
        });
    }
}

#[test]
fn ipv6_each_extension_header() {
    for kind in [0, 43, 44, 60, 51] {
        let packet = ipv6_chain(blocked6(), dst6(), &[kind], IPPROTO_TCP, &tcp(25));
        check_blocked(&eth(&[ETHERTYPE_IPV6], &packet), Family::Ipv6);
    }
}

#[test]
fn ipv6_ah_length_is_in_4_byte_units_plus_2() {
    for len_byte in [0u8, 1, 4, 255] {
        let mut ah = vec![0; (usize::from(len_byte) + 2) * 4];
        ah[0] = IPPROTO_TCP;
        ah[1] = len_byte;
        ah.extend(tcp(25));
        let packet = ipv6_packet(blocked6(), dst6(), 51, &ah);
        check_blocked(&eth(&[ETHERTYPE_IPV6], &packet), Family::Ipv6);
    }
}

#[test]
fn ipv6_options_length_is_in_8_byte_units_plus_1() {
    for kind in [0, 43, 60] {
        for len_byte in [0u8, 2, 255] {
            let mut header = vec![0; (usize::from(len_byte) + 1) * 8];
            header[0] = IPPROTO_TCP;
            header[1] = len_byte;
            header.extend(tcp(25));
            let packet = ipv6_packet(blocked6(), dst6(), kind, &header);
            check_blocked(&eth(&[ETHERTYPE_IPV6], &packet), Family::Ipv6);
        }
    }
}

#[test]
fn ipv6_eight_extension_headers_are_walked() {
    let kinds = [0, 43, 60, 51, 44, 60, 43, 51];
    let packet = ipv6_chain(blocked6(), dst6(), &kinds, IPPROTO_TCP, &tcp(25));
    check_blocked(&eth(&[ETHERTYPE_IPV6], &packet), Family::Ipv6);
    let packet = ipv6_chain(blocked6(), dst6(), &kinds, IPV6_NO_NEXT_HEADER, &[]);
    check_pass(
        &eth(&[ETHERTYPE_IPV6], &packet),
        Reason::NotTcp,
        Family::Ipv6,
    );
}

#[test]
fn ipv6_ninth_extension_header_is_malformed() {
    for ninth in [0, 43, 44, 60, 51] {
        let mut kinds = vec![60; 8];
        kinds.push(ninth);
        check_malformed6(|src| {
            eth(
                &[ETHERTYPE_IPV6],
                &ipv6_chain(src, dst6(), &kinds, IPPROTO_TCP, &tcp(25)),
            )
        });
        // Even when the frame ends before the ninth header.
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &kinds, IPPROTO_TCP, &tcp(25));
            eth(&[ETHERTYPE_IPV6], &packet[..40 + 8 * 16])
        });
    }
}

#[test]
fn ipv6_extension_header_too_short_to_read() {
    for kind in [0, 43, 60, 51] {
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &[kind], IPPROTO_TCP, &tcp(25));
            eth(&[ETHERTYPE_IPV6], &packet[..41])
        });
    }
}

#[test]
fn ipv6_extension_header_beyond_the_frame() {
    for (kind, len) in [(0, 16), (43, 16), (60, 16), (51, 12), (44, 8)] {
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &[kind], IPPROTO_TCP, &tcp(25));
            eth(&[ETHERTYPE_IPV6], &packet[..40 + len - 1])
        });
        // Complete header, no ports: malformed at step 4 instead.
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &[kind], IPPROTO_TCP, &tcp(25));
            eth(&[ETHERTYPE_IPV6], &packet[..40 + len])
        });
    }
}

// ---- 3. protocol and fragments ------------------------------------------------------

#[test]
fn not_tcp() {
    let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_UDP, 0, 0, &udp(25));
    check_pass(
        &eth(&[ETHERTYPE_IPV4], &packet),
        Reason::NotTcp,
        Family::Ipv4,
    );
    let packet = ipv6_packet(blocked6(), dst6(), IPPROTO_UDP, &udp(25));
    check_pass(
        &eth(&[ETHERTYPE_IPV6], &packet),
        Reason::NotTcp,
        Family::Ipv6,
    );
    // Protocol is decided before the ports are read.
    let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_UDP, 0, 0, &[]);
    check_pass(
        &eth(&[ETHERTYPE_IPV4], &packet),
        Reason::NotTcp,
        Family::Ipv4,
    );
}

#[test]
fn ipv4_fragments() {
    let more = 0x2000;
    // First fragment (offset 0, more fragments): judged normally.
    let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 0, more, &tcp(25));
    check_blocked(&eth(&[ETHERTYPE_IPV4], &packet), Family::Ipv4);
    // The don't-fragment bit is not an offset.
    let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 0, 0x4000, &tcp(25));
    check_blocked(&eth(&[ETHERTYPE_IPV4], &packet), Family::Ipv4);
    for word in [1, 185, more | 0x1fff] {
        // Non-first: no L4 bytes are needed.
        let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 0, word, &[]);
        check_pass(
            &eth(&[ETHERTYPE_IPV4], &packet),
            Reason::Fragment,
            Family::Ipv4,
        );
        let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_UDP, 0, word, &[1, 2]);
        check_pass(
            &eth(&[ETHERTYPE_IPV4], &packet),
            Reason::NotTcp,
            Family::Ipv4,
        );
    }
}

#[test]
fn ipv6_fragments() {
    // First fragment: the walk continues after it.
    let mut rest = frag6(IPPROTO_TCP, 0, true);
    rest.extend(tcp(25));
    let packet = ipv6_packet(blocked6(), dst6(), 44, &rest);
    check_blocked(&eth(&[ETHERTYPE_IPV6], &packet), Family::Ipv6);
    for offset in [1, 185, 0x1fff] {
        // Non-first: the walk stops; nothing after the fragment header is read.
        let packet = ipv6_packet(blocked6(), dst6(), 44, &frag6(IPPROTO_TCP, offset, false));
        check_pass(
            &eth(&[ETHERTYPE_IPV6], &packet),
            Reason::Fragment,
            Family::Ipv6,
        );
        let packet = ipv6_packet(blocked6(), dst6(), 44, &frag6(IPPROTO_UDP, offset, true));
        check_pass(
            &eth(&[ETHERTYPE_IPV6], &packet),
            Reason::NotTcp,
            Family::Ipv6,
        );
        // Its next header is the protocol even if it names another extension header.
        let packet = ipv6_packet(blocked6(), dst6(), 44, &frag6(60, offset, true));
        check_pass(
            &eth(&[ETHERTYPE_IPV6], &packet),
            Reason::NotTcp,
            Family::Ipv6,
        );
        // Behind other extension headers.
        let mut rest = ext(0, 44);
        rest.extend(frag6(IPPROTO_TCP, offset, false));
        let packet = ipv6_packet(blocked6(), dst6(), 0, &rest);
        check_pass(
            &eth(&[ETHERTYPE_IPV6], &packet),
            Reason::Fragment,
            Family::Ipv6,
        );
    }
}

#[test]
fn ipv6_non_first_fragment_as_eighth_header_ends_the_walk() {
    let mut kinds = vec![60; 7];
    kinds.push(44);
    let mut packet = ipv6_chain(blocked6(), dst6(), &kinds, IPPROTO_TCP, &[]);
    let frag = packet.len() - 8;
    packet[frag..].copy_from_slice(&frag6(0, 8, false));
    check_pass(
        &eth(&[ETHERTYPE_IPV6], &packet),
        Reason::NotTcp,
        Family::Ipv6,
    );
}

// ---- 4. ports -----------------------------------------------------------------------

#[test]
fn frame_ending_right_after_the_ports() {
    let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 0, 0, &tcp(25)[..4]);
    check_blocked(&eth(&[ETHERTYPE_IPV4], &packet), Family::Ipv4);
    let packet = ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 2, 0, &tcp(25)[..4]);
    check_blocked(&eth(&[ETHERTYPE_IPV4], &packet), Family::Ipv4);
    let packet = ipv6_packet(blocked6(), dst6(), IPPROTO_TCP, &tcp(25)[..4]);
    check_blocked(&eth(&[ETHERTYPE_IPV6], &packet), Family::Ipv6);
    let packet = ipv6_chain(blocked6(), dst6(), &[0, 51], IPPROTO_TCP, &tcp(25)[..4]);
    check_blocked(&eth(&[ETHERTYPE_IPV6], &packet), Family::Ipv6);
}

#[test]
fn truncated_ports() {
    for len in 0..4 {
        check_malformed4(|src| {
            let packet = ipv4_packet(src, dst4(), IPPROTO_TCP, 1, 0, &tcp(25)[..len]);
            eth(&[ETHERTYPE_IPV4], &packet)
        });
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &[43], IPPROTO_TCP, &tcp(25)[..len]);
            eth(&[ETHERTYPE_IPV6], &packet)
        });
    }
}

#[test]
fn unfiltered_port_passes_before_the_source_lookup() {
    for dport in [0, 24, 26, 80, 465, 65535] {
        check_pass(
            &eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), dport)),
            Reason::Port,
            Family::Ipv4,
        );
        check_pass(
            &eth(&[ETHERTYPE_IPV6], &tcp6(blocked6(), dst6(), dport)),
            Reason::Port,
            Family::Ipv6,
        );
    }
    check_blocked(
        &eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 587)),
        Family::Ipv4,
    );
}

// ---- 5. source and destination ------------------------------------------------------

#[test]
fn unmanaged_source() {
    let frame = eth(&[ETHERTYPE_IPV4], &tcp4(unmanaged4(), dst4(), 25));
    check_pass(&frame, Reason::Unmanaged, Family::Ipv4);
    let frame = eth(&[ETHERTYPE_IPV6], &tcp6(unmanaged6(), dst6(), 25));
    check_pass(&frame, Reason::Unmanaged, Family::Ipv6);
}

#[test]
fn exempt_source() {
    let d = judge(&eth(&[ETHERTYPE_IPV4], &tcp4(exempt4(), dst4(), 25)));
    check(
        &d,
        Verdict::Pass,
        Reason::Exempt,
        Family::Ipv4,
        EXEMPT_GROUP,
    );
    assert_eq!(d.source_prefix, Some(net("10.1.0.0/16")));
    // Exemption wins before the relay lookup.
    let d = judge(&eth(&[ETHERTYPE_IPV6], &tcp6(exempt6(), relay6(), 25)));
    check(d, Verdict::Pass, Reason::Exempt, Family::Ipv6, EXEMPT_GROUP);
}

#[test]
fn blocked_source() {
    let d = judge(&eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 25)));
    check(
        &d,
        Verdict::Drop,
        Reason::Blocked,
        Family::Ipv4,
        BLOCK_GROUP,
    );
    assert_eq!(d.source_prefix, Some(net("10.0.0.0/8")));
    let d = judge(&eth(&[ETHERTYPE_IPV6], &tcp6(blocked6(), dst6(), 25)));
    assert_eq!(d.source_prefix, Some(net("2001:db8::/32")));
}

#[test]
fn relay_destination() {
    for image in [image(), monitor_image()] {
        let d = judge_frame(
            &image,
            &eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), relay4(), 25)),
        );
        check(&d, Verdict::Pass, Reason::Relay, Family::Ipv4, BLOCK_GROUP);
        assert_eq!(d.relay_prefix, Some(net("203.0.113.0/24")));
        let d = judge_frame(
            &image,
            &eth(&[ETHERTYPE_IPV6], &tcp6(blocked6(), relay6(), 25)),
        );
        check(&d, Verdict::Pass, Reason::Relay, Family::Ipv6, BLOCK_GROUP);
        assert_eq!(d.relay_prefix, Some(net("2001:db8:face::/48")));
    }
}

#[test]
fn monitor_mode() {
    let image = monitor_image();
    let d = judge_frame(
        &image,
        &eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 25)),
    );
    check(
        d,
        Verdict::Pass,
        Reason::Monitored,
        Family::Ipv4,
        BLOCK_GROUP,
    );
    let d = judge_frame(
        &image,
        &eth(&[ETHERTYPE_IPV6], &tcp6(blocked6(), dst6(), 25)),
    );
    check(
        d,
        Verdict::Pass,
        Reason::Monitored,
        Family::Ipv6,
        BLOCK_GROUP,
    );
    // Only would-be drops change.
    let d = judge_frame(
        &image,
        &eth(&[ETHERTYPE_IPV4], &tcp4(exempt4(), dst4(), 25)),
    );
    check(d, Verdict::Pass, Reason::Exempt, Family::Ipv4, EXEMPT_GROUP);
    let d = judge_frame(
        &image,
        &eth(&[ETHERTYPE_IPV4], &tcp4(unmanaged4(), dst4(), 25)),
    );
    check(d, Verdict::Pass, Reason::Unmanaged, Family::Ipv4, 0);
}

#[test]
fn unknown_smtp_code_blocks() {
    let mut image = image();
    image.insert_source(
        net("10.9.0.0/16"),
        SourceRule {
            group: 3,
            smtp: 0,
            mode: 0,
        },
    );
    let d = judge_frame(
        &image,
        &eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), dst4(), 25)),
    );
    check(d, Verdict::Drop, Reason::Blocked, Family::Ipv4, 3);
}

// ---- judge_flow ---------------------------------------------------------------------

#[test]
fn judge_flow_matches_judge_frame() {
    let sources4 = [blocked4(), exempt4(), unmanaged4()];
    let sources6 = [blocked6(), exempt6(), unmanaged6()];
    for image in [image(), monitor_image()] {
        for dport in [25, 80, 587] {
            for (src, dst) in sources4.iter().flat_map(|s| [(*s, dst4()), (*s, relay4())]) {
                let frame = eth(&[ETHERTYPE_IPV4], &tcp4(src, dst, dport));
                let flow = judge_flow(&image, src.into(), dst.into(), dport);
                assert_eq!(flow, judge_frame(&image, &frame));
            }
            for (src, dst) in sources6.iter().flat_map(|s| [(*s, dst6()), (*s, relay6())]) {
                let frame = eth(&[ETHERTYPE_IPV6], &tcp6(src, dst, dport));
                let flow = judge_flow(&image, src.into(), dst.into(), dport);
                assert_eq!(flow, judge_frame(&image, &frame));
            }
        }
    }
}

#[test]
fn judge_flow_decisions() {
    let image = image();
    let d = judge_flow(&image, blocked4().into(), dst4().into(), 25);
    check(d, Verdict::Drop, Reason::Blocked, Family::Ipv4, BLOCK_GROUP);
    let d = judge_flow(&image, blocked6().into(), relay6().into(), 587);
    check(d, Verdict::Pass, Reason::Relay, Family::Ipv6, BLOCK_GROUP);
    let d = judge_flow(&image, exempt4().into(), dst4().into(), 25);
    check(d, Verdict::Pass, Reason::Exempt, Family::Ipv4, EXEMPT_GROUP);
    let d = judge_flow(&image, blocked4().into(), dst4().into(), 80);
    check(d, Verdict::Pass, Reason::Port, Family::Ipv4, 0);
    // Mixed families: the family is the source's; the destination uses its own relays.
    let d = judge_flow(&image, blocked4().into(), relay6().into(), 25);
    check(d, Verdict::Pass, Reason::Relay, Family::Ipv4, BLOCK_GROUP);
}

// ---- longest-prefix match -----------------------------------------------------------

#[test]
fn more_specific_allow_inside_a_block_wins() {
    let image = image();
    let (prefix, rule) = lookup_source(&image, exempt4().into()).unwrap();
    assert_eq!((prefix, rule), (net("10.1.0.0/16"), allow(EXEMPT_GROUP)));
    let (prefix, rule) = lookup_source(&image, v4("10.2.0.1").into()).unwrap();
    assert_eq!((prefix, rule), (net("10.0.0.0/8"), block(BLOCK_GROUP)));
    let (prefix, _) = lookup_source(&image, exempt6().into()).unwrap();
    assert_eq!(prefix, net("2001:db8:1::/48"));
    assert_eq!(lookup_source(&image, unmanaged4().into()), None);
    assert_eq!(lookup_source(&image, unmanaged6().into()), None);
}

#[test]
fn lpm_edges() {
    let mut image = image();
    image.insert_source(net("0.0.0.0/0"), block(3));
    image.insert_source(net("10.1.2.3/32"), block(4));
    image.insert_source(net("::/0"), block(5));
    image.insert_source(net("2001:db8:1::3/128"), block(6));
    let group = |addr: IpAddr| lookup_source(&image, addr).unwrap().1.group;
    assert_eq!(group(unmanaged4().into()), 3);
    assert_eq!(group(exempt4().into()), 4);
    assert_eq!(group(v4("10.1.2.4").into()), EXEMPT_GROUP);
    assert_eq!(group(unmanaged6().into()), 5);
    assert_eq!(group(exempt6().into()), 6);
    // Families do not mix: no IPv4 prefix matches an IPv4-mapped IPv6 address.
    image.sources_v6.clear();
    assert_eq!(lookup_source(&image, v6("::ffff:10.1.2.3").into()), None);
}

#[test]
fn relay_prefix_longest_match() {
    let mut image = image();
    let mut relays = image.relays();
    relays.push(net("203.0.113.128/25"));
    image.set_relays(&relays).unwrap();
    assert_eq!(
        lookup_relay(&image, relay4().into()),
        Some(net("203.0.113.0/24"))
    );
    let inner = v4("203.0.113.200").into();
    assert_eq!(lookup_relay(&image, inner), Some(net("203.0.113.128/25")));
    assert_eq!(
        lookup_relay(&image, relay6().into()),
        Some(net("2001:db8:face::/48"))
    );
    assert_eq!(lookup_relay(&image, dst4().into()), None);
    assert_eq!(lookup_relay(&image, dst6().into()), None);
}

/// Against a linear scan, on many random prefixes.
#[test]
fn lpm_agrees_with_a_linear_scan() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut image = MapImage::new(Config::empty());
    for i in 0..20_000 {
        // Cluster the prefixes into 10.0.0.0/12 so lookups find nested matches.
        let addr = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x000f_ffff));
        let len = 12 + (next() % 21) as u8;
        let prefix = IpNet::new(addr.into(), len).unwrap().trunc();
        image.insert_source(prefix, block(i % 1000 + 1));
        let addr = Ipv6Addr::from(0x2001_0db8u128 << 96 | u128::from(next() as u16) << 80);
        let len = 32 + (next() % 97) as u8;
        image.insert_source(IpNet::new(addr.into(), len).unwrap().trunc(), allow(7));
    }
    let all: Vec<(IpNet, SourceRule)> = image
        .sources_v4
        .iter()
        .map(|(p, r)| (IpNet::V4(*p), *r))
        .chain(image.sources_v6.iter().map(|(p, r)| (IpNet::V6(*p), *r)))
        .collect();
    for _ in 0..300 {
        let a4: IpAddr = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x000f_ffff)).into();
        let a6: IpAddr =
            Ipv6Addr::from(0x2001_0db8u128 << 96 | u128::from(next() as u16) << 80).into();
        for addr in [a4, a6] {
            let scan = all
                .iter()
                .filter(|(p, _)| p.contains(&addr))
                .max_by_key(|(p, _)| p.prefix_len())
                .copied();
            assert_eq!(lookup_source(&image, addr), scan, "{addr}");
        }
    }
}

#[test]
fn verdict_names_and_serialization() {
    assert_eq!(Verdict::Pass.name(), "pass");
    assert_eq!(Verdict::Drop.name(), "drop");
    assert_eq!(Verdict::Reject.name(), "reject");
    assert_eq!(serde_json::to_string(&Verdict::Pass).unwrap(), "\"pass\"");
    assert_eq!(serde_json::to_string(&Verdict::Drop).unwrap(), "\"drop\"");
    assert_eq!(
        serde_json::to_string(&Verdict::Reject).unwrap(),
        "\"reject\""
    );
}

// ---- relay limit --------------------------------------------------------------------

const SECOND: u64 = 1_000_000_000;

/// `image()` with relays limited to `per_minute` SYNs per source, bursts of `burst`.
fn limited_image(per_minute: u64, burst: u64) -> MapImage {
    let mut image = image();
    image.config.relay_interval_ns = 60 * SECOND / per_minute;
    image.config.relay_tolerance_ns = (burst - 1) * image.config.relay_interval_ns;
    image
}

/// TCP with the given flags byte from `src` to `dst:25`.
fn segment4(src: Ipv4Addr, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
    let mut t = tcp(25);
    t[13] = flags;
    eth(
        &[ETHERTYPE_IPV4],
        &ipv4_packet(src, dst, IPPROTO_TCP, 0, 0, &t),
    )
}

fn segment6(src: Ipv6Addr, dst: Ipv6Addr, flags: u8) -> Vec<u8> {
    let mut t = tcp(25);
    t[13] = flags;
    eth(&[ETHERTYPE_IPV6], &ipv6_packet(src, dst, IPPROTO_TCP, &t))
}

#[track_caller]
fn verdicts(
    model: &mut Model,
    image: &MapImage,
    frames: &[(&[u8], u64)],
) -> Vec<(Verdict, Reason)> {
    frames
        .iter()
        .map(|(frame, now)| {
            let d = model.judge_frame(image, frame, *now);
            (d.verdict, d.reason)
        })
        .collect()
}

const PASS_RELAY: (Verdict, Reason) = (Verdict::Pass, Reason::Relay);
const LIMITED: (Verdict, Reason) = (Verdict::Drop, Reason::RateLimited);

#[test]
fn source_keys_are_the_ipv4_address_and_the_ipv6_64() {
    assert_eq!(
        SourceKey::from_ip(v4("100.64.1.2").into()),
        SourceKey {
            family: Family::Ipv4 as u32,
            address: [100, 64, 1, 2, 0, 0, 0, 0]
        }
    );
    assert_eq!(
        SourceKey::from_ip(v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd").into()),
        SourceKey {
            family: Family::Ipv6 as u32,
            address: [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2]
        }
    );
    // An IPv4 address and the IPv6 /64 with the same first bytes are different sources.
    assert_ne!(
        SourceKey::from_ip(v4("32.1.13.184").into()),
        SourceKey::from_ip(v6("2001:db8::1").into())
    );
}

#[test]
fn limiter_passes_the_burst_then_one_per_interval() {
    // 6 a minute: one every 10 s; bursts of 3.
    let image = limited_image(6, 3);
    let syn = segment4(blocked4(), relay4(), 0x02);
    let mut model = Model::new();
    let t0 = 1_000 * SECOND;
    let got = verdicts(
        &mut model,
        &image,
        &[
            (&syn, t0),
            (&syn, t0),
            (&syn, t0 + 1),
            // The burst is spent: the fourth waits for a token.
            (&syn, t0 + 2),
            (&syn, t0 + 9 * SECOND),
            // One token back 10 s after the first SYN, and only one.
            (&syn, t0 + 10 * SECOND),
            (&syn, t0 + 10 * SECOND + 1),
            // 30 s idle later the bucket is full again: 3 back to back.
            (&syn, t0 + 50 * SECOND),
            (&syn, t0 + 50 * SECOND),
            (&syn, t0 + 50 * SECOND),
            (&syn, t0 + 50 * SECOND),
        ],
    );
    assert_eq!(
        got,
        [
            PASS_RELAY, PASS_RELAY, PASS_RELAY, LIMITED, LIMITED, PASS_RELAY, LIMITED, PASS_RELAY,
            PASS_RELAY, PASS_RELAY, LIMITED
        ]
    );
    // The rejected SYNs moved nothing: the bucket is 3 intervals ahead of the last pass.
    assert_eq!(
        model.limiter.tat(&SourceKey::from_ip(blocked4().into())),
        Some(t0 + 80 * SECOND)
    );
}

#[test]
fn limiter_keeps_other_sources_apart() {
    let image = limited_image(1, 1);
    let mut model = Model::new();
    let a = segment4(v4("10.9.0.1"), relay4(), 0x02);
    let b = segment4(v4("10.9.0.2"), relay4(), 0x02);
    let got = verdicts(
        &mut model,
        &image,
        &[(&a, 0), (&a, 1), (&b, 2), (&b, 3), (&a, 4)],
    );
    assert_eq!(got, [PASS_RELAY, LIMITED, PASS_RELAY, LIMITED, LIMITED]);
    assert_eq!(model.limiter.len(), 2);
}

#[test]
fn ipv6_sources_share_a_bucket_per_64() {
    let image = limited_image(1, 2);
    let mut model = Model::new();
    let host_a = segment6(v6("2001:db8:9:1::1"), relay6(), 0x02);
    let host_b = segment6(v6("2001:db8:9:1:ffff:ffff:ffff:ffff"), relay6(), 0x02);
    let host_c = segment6(v6("2001:db8:9:1:1234::"), relay6(), 0x02);
    let next_64 = segment6(v6("2001:db8:9:2::1"), relay6(), 0x02);
    let got = verdicts(
        &mut model,
        &image,
        &[
            (&host_a, 0),
            (&host_b, 0),
            (&host_c, 0),
            (&next_64, 0),
            (&next_64, 0),
            (&next_64, 0),
        ],
    );
    assert_eq!(
        got,
        [
            PASS_RELAY, PASS_RELAY, LIMITED, PASS_RELAY, PASS_RELAY, LIMITED
        ]
    );
}

#[test]
fn only_connection_requests_to_relays_from_block_groups_are_limited() {
    let image = limited_image(1, 1);
    let mut model = Model::new();
    let syn = segment4(blocked4(), relay4(), 0x02);
    // Every flag mix with SYN but without ACK and RST is a connection request.
    for flags in [0x02, 0x03, 0x0a, 0x22, 0x42, 0x82, 0xc2] {
        let mut fresh = Model::new();
        let frame = segment4(blocked4(), relay4(), flags);
        let got = verdicts(&mut fresh, &image, &[(&frame, 0), (&frame, 0)]);
        assert_eq!(got, [PASS_RELAY, LIMITED], "flags {flags:#04x}");
    }
    assert_eq!(
        verdicts(&mut model, &image, &[(&syn, 0), (&syn, 0)]),
        [PASS_RELAY, LIMITED]
    );
    // The bucket is empty, but these are never counted nor limited.
    for flags in [0x00, 0x10, 0x12, 0x04, 0x06, 0x14, 0x16, 0x01, 0x11, 0x18] {
        let frame = segment4(blocked4(), relay4(), flags);
        let d = model.judge_frame(&image, &frame, 0);
        assert_eq!((d.verdict, d.reason), PASS_RELAY, "flags {flags:#04x}");
    }
    // Flags not in the frame: not a connection request.
    let cut = &syn[..14 + 20 + 13];
    let d = model.judge_frame(&image, cut, 0);
    assert_eq!((d.verdict, d.reason), PASS_RELAY);
    // Exempt and unmanaged sources, and other ports, never reach the limit.
    for src in [exempt4(), unmanaged4()] {
        let frame = segment4(src, relay4(), 0x02);
        for _ in 0..3 {
            assert_ne!(
                model.judge_frame(&image, &frame, 0).reason,
                Reason::RateLimited
            );
        }
    }
    let port = eth(&[ETHERTYPE_IPV4], &tcp4(blocked4(), relay4(), 80));
    assert_eq!(model.judge_frame(&image, &port, 0).reason, Reason::Port);
    // Non-relay destinations are blocked as always, limit or not.
    let blocked = segment4(blocked4(), dst4(), 0x02);
    let d = model.judge_frame(&image, &blocked, 0);
    assert_eq!((d.verdict, d.reason), (Verdict::Drop, Reason::Blocked));
}

#[test]
fn rate_limited_is_monitored_in_monitor_mode_and_never_rejected() {
    let mut image = limited_image(1, 1);
    image.config.action = Action::Reject as u32;
    let syn = segment6(blocked6(), relay6(), 0x02);
    let mut model = Model::new();
    let limited = [
        model.judge_frame(&image, &syn, 0),
        model.judge_frame(&image, &syn, 0),
    ];
    assert_eq!((limited[1].verdict, limited[1].reason), LIMITED);
    assert_eq!(limited[1].reply, None);
    assert_eq!(limited[1].group, BLOCK_GROUP);
    assert_eq!(limited[1].relay_prefix, Some(net("2001:db8:face::/48")));
    image.config.flags |= FLAG_MONITOR;
    let mut model = Model::new();
    let got = verdicts(&mut model, &image, &[(&syn, 0), (&syn, 0)]);
    assert_eq!(got, [PASS_RELAY, (Verdict::Pass, Reason::Monitored)]);
}

#[test]
fn no_limit_means_no_buckets() {
    let image = image();
    let mut model = Model::new();
    let syn = segment4(blocked4(), relay4(), 0x02);
    for now in 0..100 {
        assert_eq!(verdicts(&mut model, &image, &[(&syn, now)]), [PASS_RELAY]);
    }
    assert!(model.limiter.is_empty());
    let mut limiter = RelayLimiter::new();
    assert!(limiter.admit(&image.config, SourceKey::from_ip(blocked4().into()), 0));
    assert!(limiter.is_empty());
}

// ---- reject -------------------------------------------------------------------------

fn reject_image() -> MapImage {
    let mut image = image();
    image.config.action = Action::Reject as u32;
    image
}

/// `eth()`'s MACs: destination 02:00:00:00:00:01, source 02:00:00:00:00:02.
const FRAME_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const FRAME_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// A reply read back field by field with etherparse, from its IP header at `l3`.
#[track_caller]
fn check_reply4(reply: &[u8], l3: usize, src: Ipv4Addr, dst: Ipv4Addr, ack: u32) {
    use etherparse::{Ipv4HeaderSlice, TcpHeaderSlice};
    assert_eq!(reply.len(), l3 + 40);
    assert_eq!(&reply[0..6], &FRAME_SRC_MAC);
    assert_eq!(&reply[6..12], &FRAME_DST_MAC);
    let ip = Ipv4HeaderSlice::from_slice(&reply[l3..]).unwrap();
    assert_eq!((ip.ihl(), ip.total_len(), ip.identification()), (5, 40, 0));
    assert!(ip.dont_fragment() && !ip.more_fragments());
    assert_eq!((ip.ttl(), ip.protocol().0, ip.dcp().value()), (64, 6, 0));
    assert_eq!((ip.source_addr(), ip.destination_addr()), (dst, src));
    let header = ip.to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum());
    let tcp = TcpHeaderSlice::from_slice(&reply[l3 + 20..]).unwrap();
    assert_eq!((tcp.source_port(), tcp.destination_port()), (25, 40000));
    assert_eq!(
        (tcp.sequence_number(), tcp.acknowledgment_number()),
        (0, ack)
    );
    assert_eq!(tcp.data_offset(), 5);
    assert_eq!(reply[l3 + 20 + 13], 0x14, "RST|ACK only");
    assert_eq!((tcp.window_size(), tcp.urgent_pointer()), (0, 0));
    let checksum = tcp
        .to_header()
        .calc_checksum_ipv4_raw(dst.octets(), src.octets(), &[])
        .unwrap();
    assert_eq!(tcp.checksum(), checksum);
}

#[track_caller]
fn check_reply6(reply: &[u8], l3: usize, src: Ipv6Addr, dst: Ipv6Addr, ack: u32) {
    use etherparse::{Ipv6HeaderSlice, TcpHeaderSlice};
    assert_eq!(reply.len(), l3 + 60);
    assert_eq!(&reply[0..6], &FRAME_SRC_MAC);
    assert_eq!(&reply[6..12], &FRAME_DST_MAC);
    let ip = Ipv6HeaderSlice::from_slice(&reply[l3..]).unwrap();
    assert_eq!((ip.traffic_class(), ip.flow_label().value()), (0, 0));
    assert_eq!(
        (ip.payload_length(), ip.next_header().0, ip.hop_limit()),
        (20, 6, 64)
    );
    assert_eq!((ip.source_addr(), ip.destination_addr()), (dst, src));
    let tcp = TcpHeaderSlice::from_slice(&reply[l3 + 40..]).unwrap();
    assert_eq!((tcp.source_port(), tcp.destination_port()), (25, 40000));
    assert_eq!(
        (tcp.sequence_number(), tcp.acknowledgment_number()),
        (0, ack)
    );
    assert_eq!(reply[l3 + 40 + 12..l3 + 40 + 14], [0x50, 0x14]);
    let checksum = tcp
        .to_header()
        .calc_checksum_ipv6_raw(dst.octets(), src.octets(), &[])
        .unwrap();
    assert_eq!(tcp.checksum(), checksum);
}

/// A TCP header with sequence number `seq`, `flags`, data offset `words` and `payload`.
fn tcp_with(seq: u32, flags: u8, words: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp(25);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = words << 4;
    t[13] = flags;
    t.extend(vec![1; usize::from(words.max(5) - 5) * 4]);
    t.extend(payload);
    t
}

#[test]
fn reject_answers_a_blocked_syn_with_rst_ack() {
    let image = reject_image();
    let frame = eth(
        &[ETHERTYPE_IPV4],
        &ipv4_packet(
            blocked4(),
            dst4(),
            IPPROTO_TCP,
            0,
            0,
            &tcp_with(1000, 0x02, 5, &[]),
        ),
    );
    let d = judge_frame(&image, &frame);
    assert_eq!(
        (d.verdict, d.reason, d.group),
        (Verdict::Reject, Reason::Blocked, BLOCK_GROUP)
    );
    check_reply4(d.reply.as_ref().unwrap(), 14, blocked4(), dst4(), 1001);
    assert_eq!(reply_to(&frame), d.reply);

    let frame = eth(
        &[ETHERTYPE_IPV6],
        &ipv6_packet(blocked6(), dst6(), IPPROTO_TCP, &tcp_with(7, 0x02, 5, &[])),
    );
    let d = judge_frame(&image, &frame);
    assert_eq!((d.verdict, d.reason), (Verdict::Reject, Reason::Blocked));
    check_reply6(d.reply.as_ref().unwrap(), 14, blocked6(), dst6(), 8);
}

#[test]
fn reject_acknowledges_syn_fin_and_payload_with_wrapping() {
    let image = reject_image();
    // (sequence, flags, data offset, payload, expected ack)
    let cases: [(u32, u8, u8, &[u8], u32); 6] = [
        (100, 0x02, 5, b"", 101),
        (100, 0x03, 5, b"", 102),
        (100, 0x02, 8, b"hello", 106),
        (100, 0x0b, 6, b"abc", 105),
        (u32::MAX, 0x02, 5, b"", 0),
        (u32::MAX - 2, 0x03, 5, b"xyz", 2),
    ];
    for (seq, flags, words, payload, ack) in cases {
        let t = tcp_with(seq, flags, words, payload);
        let frame = eth(
            &[ETHERTYPE_IPV4],
            &ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 2, 0, &t),
        );
        let d = judge_frame(&image, &frame);
        assert_eq!(d.verdict, Verdict::Reject, "{seq} {flags:#x}");
        check_reply4(d.reply.as_ref().unwrap(), 14, blocked4(), dst4(), ack);
        // IPv6 with 28 bytes of extension headers (a 16-byte options header, a 12-byte AH).
        let frame = eth(
            &[ETHERTYPE_IPV6],
            &ipv6_chain(blocked6(), dst6(), &[60, 51], IPPROTO_TCP, &t),
        );
        let d = judge_frame(&image, &frame);
        assert_eq!(d.verdict, Verdict::Reject, "{seq} {flags:#x}");
        check_reply6(d.reply.as_ref().unwrap(), 14, blocked6(), dst6(), ack);
    }
}

#[test]
fn reject_reads_the_payload_length_from_the_ip_header_saturating() {
    let image = reject_image();
    let t = tcp_with(50, 0x02, 5, b"");
    let mut packet = ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 1, 0, &t);
    // Total length 1000: 1000 - 24 - 20 bytes of "payload", as the header claims.
    packet[2..4].copy_from_slice(&1000u16.to_be_bytes());
    let d = judge_frame(&image, &eth(&[ETHERTYPE_IPV4], &packet));
    check_reply4(
        d.reply.as_ref().unwrap(),
        14,
        blocked4(),
        dst4(),
        50 + 1 + 956,
    );
    // Total length 3: less than the headers, so no payload.
    packet[2..4].copy_from_slice(&3u16.to_be_bytes());
    let d = judge_frame(&image, &eth(&[ETHERTYPE_IPV4], &packet));
    check_reply4(d.reply.as_ref().unwrap(), 14, blocked4(), dst4(), 51);
    // IPv6 payload length 10 with 16 bytes of extension headers: none either.
    let mut packet = ipv6_chain(blocked6(), dst6(), &[0], IPPROTO_TCP, &t);
    packet[4..6].copy_from_slice(&10u16.to_be_bytes());
    let d = judge_frame(&image, &eth(&[ETHERTYPE_IPV6], &packet));
    check_reply6(d.reply.as_ref().unwrap(), 14, blocked6(), dst6(), 51);
    // IPv6 payload length 65535 after the 16 bytes: 65535 - 16 - 20.
    packet[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
    let d = judge_frame(&image, &eth(&[ETHERTYPE_IPV6], &packet));
    check_reply6(
        d.reply.as_ref().unwrap(),
        14,
        blocked6(),
        dst6(),
        51 + 65499,
    );
}

#[test]
fn reject_keeps_vlan_tags_and_pppoe_with_its_new_length() {
    let image = reject_image();
    let t = tcp_with(9, 0x02, 5, b"");
    // Two tags: link layer 22 bytes, copied but for the MACs.
    let frame = eth(
        &[0x88a8, 0x8100, ETHERTYPE_IPV4],
        &ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 3, 0, &t),
    );
    let reply = judge_frame(&image, &frame).reply.unwrap();
    check_reply4(&reply, 22, blocked4(), dst4(), 10);
    assert_eq!(&reply[12..22], &frame[12..22]);
    // PPPoE behind a tag: length 2 + 40, everything else of the session header kept.
    let frame = eth(
        &[0x8100, ETHERTYPE_PPPOE_SESSION],
        &pppoe(
            0x0021,
            &ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 0, 0, &t),
        ),
    );
    let reply = judge_frame(&image, &frame).reply.unwrap();
    check_reply4(&reply, 26, blocked4(), dst4(), 10);
    assert_eq!(&reply[12..22], &frame[12..22]);
    assert_eq!(u16::from_be_bytes([reply[22], reply[23]]), 42);
    assert_eq!(&reply[24..26], &[0x00, 0x21]);
    let frame = eth(
        &[ETHERTYPE_PPPOE_SESSION],
        &pppoe(0x0057, &ipv6_packet(blocked6(), dst6(), IPPROTO_TCP, &t)),
    );
    let reply = judge_frame(&image, &frame).reply.unwrap();
    check_reply6(&reply, 22, blocked6(), dst6(), 10);
    assert_eq!(u16::from_be_bytes([reply[18], reply[19]]), 62);
    assert_eq!(&reply[12..18], &frame[12..18]);
}

#[test]
fn reject_drops_what_is_not_a_whole_connection_request() {
    let image = reject_image();
    let drop = (Verdict::Drop, Reason::Blocked);
    let judge4 = |t: &[u8]| {
        let d = judge_frame(
            &image,
            &eth(
                &[ETHERTYPE_IPV4],
                &ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 0, 0, t),
            ),
        );
        assert_eq!(d.reply.is_some(), d.verdict == Verdict::Reject);
        (d.verdict, d.reason)
    };
    for flags in [0x00, 0x10, 0x12, 0x04, 0x06, 0x14, 0x01, 0x18] {
        assert_eq!(
            judge4(&tcp_with(1, flags, 5, b"")),
            drop,
            "flags {flags:#04x}"
        );
    }
    // Data offset below 5.
    for words in [0, 4] {
        assert_eq!(
            judge4(&tcp_with(1, 0x02, words, b"")),
            drop,
            "offset {words}"
        );
    }
    // Data offset beyond the segment but the fixed header whole: rejected.
    let mut t = tcp_with(1, 0x02, 5, b"");
    t[12] = 15 << 4;
    assert_eq!(judge4(&t).0, Verdict::Reject);
    // Cut inside the TCP header, flags present or not.
    let syn = tcp_with(1, 0x02, 5, b"");
    for len in [4, 12, 13, 14, 19] {
        assert_eq!(judge4(&syn[..len]), drop, "{len} bytes of TCP");
    }
    assert_eq!(judge4(&syn[..20]).0, Verdict::Reject);
    // Malformed frames are dropped, never answered.
    let mut bad = ipv4_packet(blocked4(), dst4(), IPPROTO_TCP, 0, 0, &syn);
    bad[0] = 0x44;
    let d = judge_frame(&image, &eth(&[ETHERTYPE_IPV4], &bad));
    assert_eq!(
        (d.verdict, d.reason, d.reply),
        (Verdict::Drop, Reason::Malformed, None)
    );
}

#[test]
fn reject_only_applies_to_blocked_sources_in_enforce_mode() {
    let mut image = reject_image();
    let syn = |src| segment4(src, dst4(), 0x02);
    assert_eq!(judge_frame(&image, &syn(exempt4())).reason, Reason::Exempt);
    assert_eq!(
        judge_frame(&image, &syn(unmanaged4())).reason,
        Reason::Unmanaged
    );
    let relay = judge_frame(&image, &segment4(blocked4(), relay4(), 0x02));
    assert_eq!((relay.verdict, relay.reason), PASS_RELAY);
    image.config.flags |= FLAG_MONITOR;
    let d = judge_frame(&image, &syn(blocked4()));
    assert_eq!(
        (d.verdict, d.reason, d.reply),
        (Verdict::Pass, Reason::Monitored, None)
    );
}

#[test]
fn judge_flow_is_a_connection_request() {
    let image = reject_image();
    let d = judge_flow(&image, blocked4().into(), dst4().into(), 25);
    assert_eq!(
        (d.verdict, d.reason, d.reply),
        (Verdict::Reject, Reason::Blocked, None)
    );
    // A fresh bucket: the relay passes even at the tightest limit.
    let mut image = limited_image(1, 1);
    image.config.action = Action::Reject as u32;
    let d = judge_flow(&image, blocked6().into(), relay6().into(), 25);
    assert_eq!((d.verdict, d.reason), PASS_RELAY);
}
