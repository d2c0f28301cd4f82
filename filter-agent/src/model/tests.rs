//! One test per row of `docs/semantics.md`, on hand-built frames so every byte is explicit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter_common::{Config, FLAG_MONITOR, Family, Reason, SMTP_ALLOW, SMTP_BLOCK, SourceRule};
use ipnet::IpNet;

use super::{Decision, Verdict, judge_flow, judge_frame, lookup_relay, lookup_source};
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
    SourceRule {
        group,
        smtp: SMTP_BLOCK,
    }
}

fn allow(group: u32) -> SourceRule {
    SourceRule {
        group,
        smtp: SMTP_ALLOW,
    }
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

const IPV4: u16 = 0x0800;
const IPV6: u16 = 0x86dd;
const PPPOE: u16 = 0x8864;
const TCP: u8 = 6;
const UDP: u8 = 17;
const NO_NEXT: u8 = 59;

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
    ipv4_packet(src, dst, TCP, 0, 0, &tcp(dport))
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
    ipv6_packet(src, dst, TCP, &tcp(dport))
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
fn check(d: Decision, verdict: Verdict, reason: Reason, family: Family, group: u32) {
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
            &eth(&[IPV4], &tcp4(blocked4(), dst4(), 25))[..len],
            Family::Other,
        );
    }
}

#[test]
fn plain_ethernet() {
    check_blocked(&eth(&[IPV4], &tcp4(blocked4(), dst4(), 25)), Family::Ipv4);
    check_blocked(&eth(&[IPV6], &tcp6(blocked6(), dst6(), 25)), Family::Ipv6);
}

#[test]
fn one_vlan_tag_of_each_tpid() {
    for tpid in [0x8100, 0x88a8, 0x9100] {
        check_blocked(
            &eth(&[tpid, IPV4], &tcp4(blocked4(), dst4(), 25)),
            Family::Ipv4,
        );
        check_blocked(
            &eth(&[tpid, IPV6], &tcp6(blocked6(), dst6(), 25)),
            Family::Ipv6,
        );
    }
}

#[test]
fn qinq_with_each_tpid_pair() {
    for outer in [0x8100, 0x88a8, 0x9100] {
        for inner in [0x8100, 0x88a8, 0x9100] {
            let frame = eth(&[outer, inner, IPV4], &tcp4(blocked4(), dst4(), 25));
            check_blocked(&frame, Family::Ipv4);
            let frame = eth(&[outer, inner, IPV6], &tcp6(blocked6(), dst6(), 25));
            check_blocked(&frame, Family::Ipv6);
        }
    }
}

#[test]
fn third_vlan_tag_is_not_ip() {
    for third in [0x8100, 0x88a8, 0x9100] {
        let frame = eth(
            &[0x88a8, 0x8100, third, IPV4],
            &tcp4(blocked4(), dst4(), 25),
        );
        check_pass(&frame, Reason::NotIp, Family::Other);
    }
}

#[test]
fn truncated_vlan_tag_is_malformed_without_family() {
    let one = eth(&[0x8100, IPV4], &tcp4(blocked4(), dst4(), 25));
    for len in 14..18 {
        check_malformed_sourceless(&one[..len], Family::Other);
    }
    let two = eth(&[0x88a8, 0x8100, IPV4], &tcp4(blocked4(), dst4(), 25));
    for len in 18..22 {
        check_malformed_sourceless(&two[..len], Family::Other);
    }
    // Exactly the tag and nothing more: the tag is complete, the IPv4 header is not.
    check_malformed_sourceless(&one[..18], Family::Ipv4);
}

#[test]
fn pppoe_session_ipv4_and_ipv6() {
    let frame = eth(&[PPPOE], &pppoe(0x0021, &tcp4(blocked4(), dst4(), 25)));
    check_blocked(&frame, Family::Ipv4);
    let frame = eth(&[PPPOE], &pppoe(0x0057, &tcp6(blocked6(), dst6(), 25)));
    check_blocked(&frame, Family::Ipv6);
    let frame = eth(
        &[0x8100, PPPOE],
        &pppoe(0x0021, &tcp4(blocked4(), dst4(), 25)),
    );
    check_blocked(&frame, Family::Ipv4);
}

#[test]
fn pppoe_header_fields_are_not_checked() {
    let mut session = pppoe(0x0021, &tcp4(blocked4(), dst4(), 25));
    session[..6].copy_from_slice(&[0xff; 6]);
    check_blocked(&eth(&[PPPOE], &session), Family::Ipv4);
}

#[test]
fn pppoe_non_ip_protocol_is_not_ip() {
    let frame = eth(&[PPPOE], &pppoe(0xc021, &tcp4(blocked4(), dst4(), 25)));
    check_pass(&frame, Reason::NotIp, Family::Other);
}

#[test]
fn truncated_pppoe_is_malformed_without_family() {
    let frame = eth(&[PPPOE], &pppoe(0x0021, &tcp4(blocked4(), dst4(), 25)));
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
    let frame = eth(&[IPV4], &tcp6(blocked6(), dst6(), 25));
    assert_eq!(judge(&frame).family, Family::Ipv4);
    assert_eq!(judge(&frame).reason, Reason::Malformed);
    let frame = eth(&[IPV6], &tcp4(blocked4(), dst4(), 25));
    assert_eq!(judge(&frame).family, Family::Ipv6);
    assert_eq!(judge(&frame).reason, Reason::Malformed);
}

// ---- 2. IPv4 header -----------------------------------------------------------------

#[test]
fn ipv4_options_every_ihl() {
    for words in 1..=10 {
        let packet = ipv4_packet(blocked4(), dst4(), TCP, words, 0, &tcp(25));
        check_blocked(&eth(&[IPV4], &packet), Family::Ipv4);
    }
}

#[test]
fn ipv4_total_length_is_not_checked() {
    let mut packet = tcp4(blocked4(), dst4(), 25);
    packet[2..4].copy_from_slice(&[0, 0]);
    check_blocked(&eth(&[IPV4], &packet), Family::Ipv4);
    packet[2..4].copy_from_slice(&[0xff, 0xff]);
    check_blocked(&eth(&[IPV4], &packet), Family::Ipv4);
}

#[test]
fn ipv4_shorter_than_20_bytes() {
    // The source ends at byte 16: it is still looked up.
    check_malformed4(|src| eth(&[IPV4], &tcp4(src, dst4(), 25)[..16]));
    check_malformed4(|src| eth(&[IPV4], &tcp4(src, dst4(), 25)[..19]));
    for len in [0, 15] {
        let frame = eth(&[IPV4], &tcp4(blocked4(), dst4(), 25)[..len]);
        check_malformed_sourceless(&frame, Family::Ipv4);
    }
}

#[test]
fn ipv4_bad_version() {
    for version in [0, 5, 6, 15] {
        check_malformed4(|src| {
            let mut packet = tcp4(src, dst4(), 25);
            packet[0] = version << 4 | 5;
            eth(&[IPV4], &packet)
        });
    }
}

#[test]
fn ipv4_ihl_below_5() {
    for ihl in 0..5 {
        check_malformed4(|src| {
            let mut packet = tcp4(src, dst4(), 25);
            packet[0] = 0x40 | ihl;
            eth(&[IPV4], &packet)
        });
    }
}

#[test]
fn ipv4_options_beyond_the_frame() {
    check_malformed4(|src| {
        let packet = ipv4_packet(src, dst4(), TCP, 10, 0, &tcp(25));
        eth(&[IPV4], &packet[..59])
    });
}

// ---- 2. IPv6 header and extension headers -------------------------------------------

#[test]
fn ipv6_shorter_than_40_bytes() {
    check_malformed6(|src| eth(&[IPV6], &tcp6(src, dst6(), 25)[..24]));
    check_malformed6(|src| eth(&[IPV6], &tcp6(src, dst6(), 25)[..39]));
    for len in [0, 23] {
        let frame = eth(&[IPV6], &tcp6(blocked6(), dst6(), 25)[..len]);
        check_malformed_sourceless(&frame, Family::Ipv6);
    }
}

#[test]
fn ipv6_bad_version() {
    for version in [0, 4, 7, 15] {
        check_malformed6(|src| {
            let mut packet = tcp6(src, dst6(), 25);
            packet[0] = version << 4;
            eth(&[IPV6], &packet)
        });
    }
}

#[test]
fn ipv6_each_extension_header() {
    for kind in [0, 43, 44, 60, 51] {
        let packet = ipv6_chain(blocked6(), dst6(), &[kind], TCP, &tcp(25));
        check_blocked(&eth(&[IPV6], &packet), Family::Ipv6);
    }
}

#[test]
fn ipv6_ah_length_is_in_4_byte_units_plus_2() {
    for len_byte in [0u8, 1, 4, 255] {
        let mut ah = vec![0; (usize::from(len_byte) + 2) * 4];
        ah[0] = TCP;
        ah[1] = len_byte;
        ah.extend(tcp(25));
        let packet = ipv6_packet(blocked6(), dst6(), 51, &ah);
        check_blocked(&eth(&[IPV6], &packet), Family::Ipv6);
    }
}

#[test]
fn ipv6_options_length_is_in_8_byte_units_plus_1() {
    for kind in [0, 43, 60] {
        for len_byte in [0u8, 2, 255] {
            let mut header = vec![0; (usize::from(len_byte) + 1) * 8];
            header[0] = TCP;
            header[1] = len_byte;
            header.extend(tcp(25));
            let packet = ipv6_packet(blocked6(), dst6(), kind, &header);
            check_blocked(&eth(&[IPV6], &packet), Family::Ipv6);
        }
    }
}

#[test]
fn ipv6_eight_extension_headers_are_walked() {
    let kinds = [0, 43, 60, 51, 44, 60, 43, 51];
    let packet = ipv6_chain(blocked6(), dst6(), &kinds, TCP, &tcp(25));
    check_blocked(&eth(&[IPV6], &packet), Family::Ipv6);
    let packet = ipv6_chain(blocked6(), dst6(), &kinds, NO_NEXT, &[]);
    check_pass(&eth(&[IPV6], &packet), Reason::NotTcp, Family::Ipv6);
}

#[test]
fn ipv6_ninth_extension_header_is_malformed() {
    for ninth in [0, 43, 44, 60, 51] {
        let mut kinds = vec![60; 8];
        kinds.push(ninth);
        check_malformed6(|src| eth(&[IPV6], &ipv6_chain(src, dst6(), &kinds, TCP, &tcp(25))));
        // Even when the frame ends before the ninth header.
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &kinds, TCP, &tcp(25));
            eth(&[IPV6], &packet[..40 + 8 * 16])
        });
    }
}

#[test]
fn ipv6_extension_header_too_short_to_read() {
    for kind in [0, 43, 60, 51] {
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &[kind], TCP, &tcp(25));
            eth(&[IPV6], &packet[..41])
        });
    }
}

#[test]
fn ipv6_extension_header_beyond_the_frame() {
    for (kind, len) in [(0, 16), (43, 16), (60, 16), (51, 12), (44, 8)] {
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &[kind], TCP, &tcp(25));
            eth(&[IPV6], &packet[..40 + len - 1])
        });
        // Complete header, no ports: malformed at step 4 instead.
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &[kind], TCP, &tcp(25));
            eth(&[IPV6], &packet[..40 + len])
        });
    }
}

// ---- 3. protocol and fragments ------------------------------------------------------

#[test]
fn not_tcp() {
    let packet = ipv4_packet(blocked4(), dst4(), UDP, 0, 0, &udp(25));
    check_pass(&eth(&[IPV4], &packet), Reason::NotTcp, Family::Ipv4);
    let packet = ipv6_packet(blocked6(), dst6(), UDP, &udp(25));
    check_pass(&eth(&[IPV6], &packet), Reason::NotTcp, Family::Ipv6);
    // Protocol is decided before the ports are read.
    let packet = ipv4_packet(blocked4(), dst4(), UDP, 0, 0, &[]);
    check_pass(&eth(&[IPV4], &packet), Reason::NotTcp, Family::Ipv4);
}

#[test]
fn ipv4_fragments() {
    let more = 0x2000;
    // First fragment (offset 0, more fragments): judged normally.
    let packet = ipv4_packet(blocked4(), dst4(), TCP, 0, more, &tcp(25));
    check_blocked(&eth(&[IPV4], &packet), Family::Ipv4);
    // The don't-fragment bit is not an offset.
    let packet = ipv4_packet(blocked4(), dst4(), TCP, 0, 0x4000, &tcp(25));
    check_blocked(&eth(&[IPV4], &packet), Family::Ipv4);
    for word in [1, 185, more | 0x1fff] {
        // Non-first: no L4 bytes are needed.
        let packet = ipv4_packet(blocked4(), dst4(), TCP, 0, word, &[]);
        check_pass(&eth(&[IPV4], &packet), Reason::Fragment, Family::Ipv4);
        let packet = ipv4_packet(blocked4(), dst4(), UDP, 0, word, &[1, 2]);
        check_pass(&eth(&[IPV4], &packet), Reason::NotTcp, Family::Ipv4);
    }
}

#[test]
fn ipv6_fragments() {
    // First fragment: the walk continues after it.
    let mut rest = frag6(TCP, 0, true);
    rest.extend(tcp(25));
    let packet = ipv6_packet(blocked6(), dst6(), 44, &rest);
    check_blocked(&eth(&[IPV6], &packet), Family::Ipv6);
    for offset in [1, 185, 0x1fff] {
        // Non-first: the walk stops; nothing after the fragment header is read.
        let packet = ipv6_packet(blocked6(), dst6(), 44, &frag6(TCP, offset, false));
        check_pass(&eth(&[IPV6], &packet), Reason::Fragment, Family::Ipv6);
        let packet = ipv6_packet(blocked6(), dst6(), 44, &frag6(UDP, offset, true));
        check_pass(&eth(&[IPV6], &packet), Reason::NotTcp, Family::Ipv6);
        // Its next header is the protocol even if it names another extension header.
        let packet = ipv6_packet(blocked6(), dst6(), 44, &frag6(60, offset, true));
        check_pass(&eth(&[IPV6], &packet), Reason::NotTcp, Family::Ipv6);
        // Behind other extension headers.
        let mut rest = ext(0, 44);
        rest.extend(frag6(TCP, offset, false));
        let packet = ipv6_packet(blocked6(), dst6(), 0, &rest);
        check_pass(&eth(&[IPV6], &packet), Reason::Fragment, Family::Ipv6);
    }
}

#[test]
fn ipv6_non_first_fragment_as_eighth_header_ends_the_walk() {
    let mut kinds = vec![60; 7];
    kinds.push(44);
    let mut packet = ipv6_chain(blocked6(), dst6(), &kinds, TCP, &[]);
    let frag = packet.len() - 8;
    packet[frag..].copy_from_slice(&frag6(0, 8, false));
    check_pass(&eth(&[IPV6], &packet), Reason::NotTcp, Family::Ipv6);
}

// ---- 4. ports -----------------------------------------------------------------------

#[test]
fn frame_ending_right_after_the_ports() {
    let packet = ipv4_packet(blocked4(), dst4(), TCP, 0, 0, &tcp(25)[..4]);
    check_blocked(&eth(&[IPV4], &packet), Family::Ipv4);
    let packet = ipv4_packet(blocked4(), dst4(), TCP, 2, 0, &tcp(25)[..4]);
    check_blocked(&eth(&[IPV4], &packet), Family::Ipv4);
    let packet = ipv6_packet(blocked6(), dst6(), TCP, &tcp(25)[..4]);
    check_blocked(&eth(&[IPV6], &packet), Family::Ipv6);
    let packet = ipv6_chain(blocked6(), dst6(), &[0, 51], TCP, &tcp(25)[..4]);
    check_blocked(&eth(&[IPV6], &packet), Family::Ipv6);
}

#[test]
fn truncated_ports() {
    for len in 0..4 {
        check_malformed4(|src| {
            let packet = ipv4_packet(src, dst4(), TCP, 1, 0, &tcp(25)[..len]);
            eth(&[IPV4], &packet)
        });
        check_malformed6(|src| {
            let packet = ipv6_chain(src, dst6(), &[43], TCP, &tcp(25)[..len]);
            eth(&[IPV6], &packet)
        });
    }
}

#[test]
fn unfiltered_port_passes_before_the_source_lookup() {
    for dport in [0, 24, 26, 80, 465, 65535] {
        check_pass(
            &eth(&[IPV4], &tcp4(blocked4(), dst4(), dport)),
            Reason::Port,
            Family::Ipv4,
        );
        check_pass(
            &eth(&[IPV6], &tcp6(blocked6(), dst6(), dport)),
            Reason::Port,
            Family::Ipv6,
        );
    }
    check_blocked(&eth(&[IPV4], &tcp4(blocked4(), dst4(), 587)), Family::Ipv4);
}

// ---- 5. source and destination ------------------------------------------------------

#[test]
fn unmanaged_source() {
    let frame = eth(&[IPV4], &tcp4(unmanaged4(), dst4(), 25));
    check_pass(&frame, Reason::Unmanaged, Family::Ipv4);
    let frame = eth(&[IPV6], &tcp6(unmanaged6(), dst6(), 25));
    check_pass(&frame, Reason::Unmanaged, Family::Ipv6);
}

#[test]
fn exempt_source() {
    let d = judge(&eth(&[IPV4], &tcp4(exempt4(), dst4(), 25)));
    check(d, Verdict::Pass, Reason::Exempt, Family::Ipv4, EXEMPT_GROUP);
    assert_eq!(d.source_prefix, Some(net("10.1.0.0/16")));
    // Exemption wins before the relay lookup.
    let d = judge(&eth(&[IPV6], &tcp6(exempt6(), relay6(), 25)));
    check(d, Verdict::Pass, Reason::Exempt, Family::Ipv6, EXEMPT_GROUP);
}

#[test]
fn blocked_source() {
    let d = judge(&eth(&[IPV4], &tcp4(blocked4(), dst4(), 25)));
    check(d, Verdict::Drop, Reason::Blocked, Family::Ipv4, BLOCK_GROUP);
    assert_eq!(d.source_prefix, Some(net("10.0.0.0/8")));
    let d = judge(&eth(&[IPV6], &tcp6(blocked6(), dst6(), 25)));
    assert_eq!(d.source_prefix, Some(net("2001:db8::/32")));
}

#[test]
fn relay_destination() {
    for image in [image(), monitor_image()] {
        let d = judge_frame(&image, &eth(&[IPV4], &tcp4(blocked4(), relay4(), 25)));
        check(d, Verdict::Pass, Reason::Relay, Family::Ipv4, BLOCK_GROUP);
        assert_eq!(d.relay_prefix, Some(net("203.0.113.0/24")));
        let d = judge_frame(&image, &eth(&[IPV6], &tcp6(blocked6(), relay6(), 25)));
        check(d, Verdict::Pass, Reason::Relay, Family::Ipv6, BLOCK_GROUP);
        assert_eq!(d.relay_prefix, Some(net("2001:db8:face::/48")));
    }
}

#[test]
fn monitor_mode() {
    let image = monitor_image();
    let d = judge_frame(&image, &eth(&[IPV4], &tcp4(blocked4(), dst4(), 25)));
    check(
        d,
        Verdict::Pass,
        Reason::Monitored,
        Family::Ipv4,
        BLOCK_GROUP,
    );
    let d = judge_frame(&image, &eth(&[IPV6], &tcp6(blocked6(), dst6(), 25)));
    check(
        d,
        Verdict::Pass,
        Reason::Monitored,
        Family::Ipv6,
        BLOCK_GROUP,
    );
    // Only would-be drops change.
    let d = judge_frame(&image, &eth(&[IPV4], &tcp4(exempt4(), dst4(), 25)));
    check(d, Verdict::Pass, Reason::Exempt, Family::Ipv4, EXEMPT_GROUP);
    let d = judge_frame(&image, &eth(&[IPV4], &tcp4(unmanaged4(), dst4(), 25)));
    check(d, Verdict::Pass, Reason::Unmanaged, Family::Ipv4, 0);
}

#[test]
fn unknown_smtp_code_blocks() {
    let mut image = image();
    image.insert_source(net("10.9.0.0/16"), SourceRule { group: 3, smtp: 0 });
    let d = judge_frame(&image, &eth(&[IPV4], &tcp4(blocked4(), dst4(), 25)));
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
                let frame = eth(&[IPV4], &tcp4(src, dst, dport));
                let flow = judge_flow(&image, src.into(), dst.into(), dport);
                assert_eq!(flow, judge_frame(&image, &frame));
            }
            for (src, dst) in sources6.iter().flat_map(|s| [(*s, dst6()), (*s, relay6())]) {
                let frame = eth(&[IPV6], &tcp6(src, dst, dport));
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
    assert_eq!(serde_json::to_string(&Verdict::Pass).unwrap(), "\"pass\"");
    assert_eq!(serde_json::to_string(&Verdict::Drop).unwrap(), "\"drop\"");
}
