//! The kernel program's actions beyond pass and drop, through BPF_PROG_TEST_RUN: the relay
//! rate limit over real time, the RST+ACK replies of `action: reject` checked as TCP/IP
//! (the byte-for-byte comparison is in replay_corpus), offender records and the events
//! ring buffer.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread::sleep,
    time::Duration,
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use filter_agent::{
    dataplane::Dataplane,
    image::{GroupInfo, MapImage},
};
use filter_common::{
    Action, ActionStat, Config, Event, EventKind, Family, OFFENDER_SETS, OffenderSet, Reason, Smtp,
    SourceKey, SourceRule, Verdict,
};
use filter_testkit::{
    frames::{ExtHeader, Frame},
    lab::{RELAY_V4, RELAY_V6, REMOTE_V4, REMOTE_V6},
};
use ipnet::IpNet;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(segments: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(segments))
}

/// Residential (block) customers in 100.64.0.0/10 and 2001:db8:1000::/36, relays as in
/// the lab, port 25 filtered.
fn image(config: impl FnOnce(&mut Config)) -> MapImage {
    let mut base = Config::empty();
    base.set_port(25);
    config(&mut base);
    let mut image = MapImage::new(base);
    image.groups.insert(
        1,
        GroupInfo {
            name: "residential".into(),
            smtp: Smtp::Block,
        },
    );
    let rule = SourceRule::new(1, Smtp::Block);
    image.insert_source("100.64.0.0/10".parse().unwrap(), rule);
    image.insert_source("2001:db8:1000::/36".parse().unwrap(), rule);
    let relays: Vec<IpNet> = vec![RELAY_V4.into(), RELAY_V6.into()];
    image.set_relays(&relays).unwrap();
    image
}

fn load(image: &MapImage) -> Dataplane {
    Dataplane::load_with(image)
        .expect("loading the XDP program needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN)")
}

fn syn(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    Frame::tcp(src, dst, 25).syn().build()
}

fn outcome(dataplane: &Dataplane, frame: &[u8]) -> (Verdict, Reason) {
    let verdict = dataplane.judge(frame).unwrap();
    (verdict.verdict, verdict.reason)
}

const PASS_RELAY: (Verdict, Reason) = (Verdict::Pass, Reason::Relay);
const LIMITED: (Verdict, Reason) = (Verdict::Drop, Reason::RateLimited);

#[test]
fn relay_limit_passes_a_burst_then_limits_and_refills_per_customer() {
    // 300 SYNs per minute (one token per 200 ms), burst 3.
    let interval = Duration::from_millis(200).as_nanos() as u64;
    let dataplane = load(&image(|c| {
        c.relay_interval_ns = interval;
        c.relay_tolerance_ns = 2 * interval;
    }));
    let relay = RELAY_V4;
    let customer = v4(100, 64, 0, 10);
    for attempt in 1..=3 {
        assert_eq!(
            outcome(&dataplane, &syn(customer, relay)),
            PASS_RELAY,
            "SYN {attempt}"
        );
    }
    assert_eq!(outcome(&dataplane, &syn(customer, relay)), LIMITED);
    assert_eq!(outcome(&dataplane, &syn(customer, relay)), LIMITED);
    // Segments of established connections are never limited.
    let ack = Frame::tcp(customer, relay, 25).ack().build();
    assert_eq!(outcome(&dataplane, &ack), PASS_RELAY);
    // Another customer has a bucket of its own.
    let neighbour = v4(100, 64, 0, 11);
    assert_eq!(outcome(&dataplane, &syn(neighbour, relay)), PASS_RELAY);
    // One token back after one interval, not two.
    sleep(Duration::from_millis(250));
    assert_eq!(outcome(&dataplane, &syn(customer, relay)), PASS_RELAY);
    assert_eq!(outcome(&dataplane, &syn(customer, relay)), LIMITED);
    // A full bucket after the whole burst time.
    sleep(Duration::from_millis(650));
    for attempt in 1..=3 {
        let got = outcome(&dataplane, &syn(customer, relay));
        assert_eq!(got, PASS_RELAY, "SYN {attempt} after refill");
    }
    assert_eq!(outcome(&dataplane, &syn(customer, relay)), LIMITED);
}

#[test]
fn relay_limit_counts_ipv6_customers_per_64() {
    let interval = Duration::from_secs(60).as_nanos() as u64;
    let dataplane = load(&image(|c| {
        c.relay_interval_ns = interval;
        c.relay_tolerance_ns = interval;
    }));
    let relay = RELAY_V6;
    let same_64 = [
        v6([0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 1]),
        v6([0x2001, 0xdb8, 0x1000, 0, 0xffff, 0, 0, 2]),
    ];
    assert_eq!(outcome(&dataplane, &syn(same_64[0], relay)), PASS_RELAY);
    assert_eq!(outcome(&dataplane, &syn(same_64[1], relay)), PASS_RELAY);
    assert_eq!(outcome(&dataplane, &syn(same_64[0], relay)), LIMITED);
    assert_eq!(outcome(&dataplane, &syn(same_64[1], relay)), LIMITED);
    let next_64 = v6([0x2001, 0xdb8, 0x1000, 1, 0, 0, 0, 1]);
    assert_eq!(outcome(&dataplane, &syn(next_64, relay)), PASS_RELAY);
}

#[test]
fn reject_answers_blocked_syns_with_a_valid_reset_under_every_encapsulation() {
    let dataplane = load(&image(|c| c.action = Action::Reject as u32));
    let customer = v4(100, 64, 0, 10);
    let customer_v6 = v6([0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0x10]);
    let remote = REMOTE_V4;
    let remote_v6 = REMOTE_V6;
    let base = |src, dst| {
        Frame::tcp(src, dst, 25)
            .syn()
            .sport(40_000)
            .seq(0xffff_fff0)
    };
    let frames = [
        ("plain ipv4", base(customer, remote)),
        ("vlan", base(customer, remote).vlan(0x8100, 100)),
        ("qinq", base(customer, remote).qinq(200, 300)),
        ("pppoe ipv4", base(customer, remote).pppoe()),
        ("ipv4 options", base(customer, remote).ipv4_options(2)),
        ("plain ipv6", base(customer_v6, remote_v6)),
        (
            "pppoe ipv6 in vlan",
            base(customer_v6, remote_v6).pppoe().vlan(0x8100, 7),
        ),
        (
            "ipv6 extension headers",
            base(customer_v6, remote_v6).ipv6_ext(&[ExtHeader::HopByHop, ExtHeader::DestOpts]),
        ),
    ];
    for (name, frame) in &frames {
        let original = frame.build();
        let verdict = dataplane.judge(&original).unwrap();
        assert_eq!(
            (verdict.verdict, verdict.reason),
            (Verdict::Reject, Reason::Blocked),
            "{name}"
        );
        let reply = verdict.reply.expect("a rejected frame has a reply");
        check_reset(name, &original, &reply);
    }
    let stats = dataplane.action_stats().unwrap();
    assert_eq!(stats[ActionStat::ResetsSent as usize], frames.len() as u64);
    // Only connection requests are answered; the rest of a blocked flow is dropped.
    for frame in [
        Frame::tcp(customer, remote, 25).ack(),
        Frame::tcp(customer, remote, 25).syn().ack(),
        Frame::tcp(customer, remote, 25).rst(),
    ] {
        assert_eq!(
            outcome(&dataplane, &frame.build()),
            (Verdict::Drop, Reason::Blocked)
        );
    }
}

/// A frame on a port with MTU 9000 arrives in several buffers; the program reads only the
/// first and counts the whole frame.
#[test]
fn multi_buffer_frames_are_judged_counted_whole_and_rejected_with_a_single_buffer_reset() {
    const JUMBO: usize = 9_014;
    let dataplane = load(&image(|c| c.action = Action::Reject as u32));
    let customer = v4(100, 64, 0, 10);
    let https = Frame::tcp(customer, REMOTE_V4, 443)
        .ack()
        .tcp_payload(&vec![0x5a; JUMBO - 54])
        .build();
    assert_eq!(https.len(), JUMBO);
    assert_eq!(outcome(&dataplane, &https), (Verdict::Pass, Reason::Port));
    let counters = dataplane.reason_counters(0).unwrap();
    let port =
        counters[filter_common::reason_counter_index(0, Family::Ipv4, Reason::Port) as usize];
    assert_eq!(
        (port.packets, port.bytes),
        (1, JUMBO as u64),
        "counted whole"
    );

    let mut blocked = syn(customer, REMOTE_V4);
    blocked.resize(JUMBO, 0);
    let verdict = dataplane.judge(&blocked).unwrap();
    assert_eq!(
        (verdict.verdict, verdict.reason),
        (Verdict::Reject, Reason::Blocked)
    );
    let reply = verdict.reply.expect("a rejected frame has a reply");
    assert_eq!(reply.len(), 54, "the reset alone, the fragments released");
    check_reset("multi-buffer syn", &blocked, &reply);
}

/// Where the IP header starts, past VLAN tags and a PPPoE session header; and the
/// PPPoE header's offset, if there is one.
fn ip_start(frame: &[u8]) -> (usize, Option<usize>) {
    let mut offset = 12;
    loop {
        match u16::from_be_bytes([frame[offset], frame[offset + 1]]) {
            0x8100 | 0x88a8 | 0x9100 => offset += 4,
            0x8864 => return (offset + 10, Some(offset + 2)),
            _ => return (offset + 2, None),
        }
    }
}

/// The reply, read back with a packet library: same link layer, addresses and ports
/// swapped, RST+ACK acknowledging the SYN, checksums right.
fn check_reset(name: &str, original: &[u8], reply: &[u8]) {
    assert_eq!(reply[0..6], original[6..12], "{name}: destination MAC");
    assert_eq!(reply[6..12], original[0..6], "{name}: source MAC");
    let (l3, pppoe) = ip_start(original);
    assert_eq!(ip_start(reply), (l3, pppoe), "{name}: same encapsulation");
    match pppoe {
        Some(p) => {
            assert_eq!(
                reply[12..p + 4],
                original[12..p + 4],
                "{name}: tags, PPPoE session"
            );
            let ip_len = reply.len() - l3;
            let length = u16::from_be_bytes([reply[p + 4], reply[p + 5]]) as usize;
            assert_eq!(length, ip_len + 2, "{name}: PPPoE length");
            assert_eq!(
                reply[p + 6..l3],
                original[p + 6..l3],
                "{name}: PPP protocol"
            );
        }
        None => assert_eq!(reply[12..l3], original[12..l3], "{name}: tags"),
    }
    let syn = SlicedPacket::from_ip(&original[l3..]).unwrap();
    let rst = SlicedPacket::from_ip(&reply[l3..])
        .unwrap_or_else(|e| panic!("{name}: the reply does not parse: {e}"));
    let Some(TransportSlice::Tcp(syn_tcp)) = syn.transport else {
        panic!("{name}: no TCP in the original");
    };
    let Some(TransportSlice::Tcp(rst_tcp)) = rst.transport else {
        panic!("{name}: no TCP in the reply");
    };
    assert!(
        rst_tcp.rst() && rst_tcp.ack() && !rst_tcp.syn(),
        "{name}: flags"
    );
    assert_eq!(rst_tcp.source_port(), syn_tcp.destination_port(), "{name}");
    assert_eq!(rst_tcp.destination_port(), syn_tcp.source_port(), "{name}");
    assert_eq!(rst_tcp.sequence_number(), 0, "{name}");
    assert_eq!(
        rst_tcp.acknowledgment_number(),
        syn_tcp.sequence_number().wrapping_add(1),
        "{name}: acknowledges the SYN"
    );
    assert!(rst_tcp.payload().is_empty(), "{name}");
    let checksum = match (&syn.net, &rst.net) {
        (Some(NetSlice::Ipv4(s)), Some(NetSlice::Ipv4(r))) => {
            assert_eq!(r.header().source(), s.header().destination(), "{name}");
            assert_eq!(r.header().destination(), s.header().source(), "{name}");
            let header = r.header().to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "{name}"
            );
            rst_tcp
                .to_header()
                .calc_checksum_ipv4(&header, rst_tcp.payload())
                .unwrap()
        }
        (Some(NetSlice::Ipv6(s)), Some(NetSlice::Ipv6(r))) => {
            assert_eq!(r.header().source(), s.header().destination(), "{name}");
            assert_eq!(r.header().destination(), s.header().source(), "{name}");
            assert!(r.extensions().is_empty(), "{name}: no extension headers");
            rst_tcp
                .to_header()
                .calc_checksum_ipv6(&r.header().to_header(), rst_tcp.payload())
                .unwrap()
        }
        _ => panic!("{name}: families differ"),
    };
    assert_eq!(rst_tcp.checksum(), checksum, "{name}: TCP checksum");
}

/// The offender table is set-associative: sources whose keys share a set keep a record
/// each while the set has room, and a newcomer takes the way seen least recently.
#[test]
fn sources_of_one_offender_set_share_it_and_the_least_recently_seen_makes_room() {
    let dataplane = load(&image(|_| {}));
    let key = |ip: IpAddr| SourceKey::from_ip(ip);
    let set_of = |ip: IpAddr| OffenderSet::index(&key(ip), OFFENDER_SETS);
    let first = v4(100, 64, 0, 10);
    // 100.64.0.0/10 holds 128 addresses per set.
    let mut same_set = (1..1u32 << 22)
        .map(|n| IpAddr::V4(Ipv4Addr::from(0x6440_0000 | n)))
        .filter(|&ip| ip != first && set_of(ip) == set_of(first));
    let (second, third) = (same_set.next().unwrap(), same_set.next().unwrap());
    // The records' clock has tick resolution: a pause orders their last-seen times.
    let block = |source: IpAddr| {
        let frame = syn(source, REMOTE_V4);
        assert_eq!(
            outcome(&dataplane, &frame),
            (Verdict::Drop, Reason::Blocked)
        );
        sleep(Duration::from_millis(25));
    };
    block(first);
    block(second);
    block(first);
    let attempts = |dataplane: &Dataplane| {
        let mut records: Vec<(SourceKey, u64)> = dataplane
            .offenders()
            .unwrap()
            .into_iter()
            .map(|(source, record)| (source, record.attempts))
            .collect();
        records.sort();
        records
    };
    let mut both = vec![(key(first), 2), (key(second), 1)];
    both.sort();
    assert_eq!(
        attempts(&dataplane),
        both,
        "two sources of one set keep a record each"
    );
    block(third);
    let mut kept = vec![(key(first), 2), (key(third), 1)];
    kept.sort();
    assert_eq!(
        attempts(&dataplane),
        kept,
        "{third} takes the way of {second}, seen least recently"
    );
    assert_eq!(dataplane.offender(&key(second)).unwrap(), None);
    assert_eq!(
        dataplane.offender(&key(first)).unwrap().map(|r| r.attempts),
        Some(2)
    );
}

#[test]
fn blocked_attempts_build_offender_records_events_and_one_alert() {
    let mut dataplane = load(&image(|c| {
        c.offender_alert_after = 3;
        c.offender_window_ns = Duration::from_secs(60).as_nanos() as u64;
        c.event_interval_ns = Duration::from_millis(1).as_nanos() as u64;
        c.event_tolerance_ns = 100 * c.event_interval_ns;
    }));
    let customer = v4(100, 64, 0, 10);
    let destinations = [v4(203, 0, 113, 9), v4(198, 51, 100, 7), v4(192, 0, 2, 200)];
    for i in 0..5 {
        let frame = syn(customer, destinations[i % destinations.len()]);
        assert_eq!(
            outcome(&dataplane, &frame),
            (Verdict::Drop, Reason::Blocked)
        );
    }
    // Passing traffic leaves no trace.
    let relay = RELAY_V4;
    assert_eq!(outcome(&dataplane, &syn(customer, relay)), PASS_RELAY);

    let offenders = dataplane.offenders().unwrap();
    let key = SourceKey {
        family: Family::Ipv4 as u32,
        address: [100, 64, 0, 10, 0, 0, 0, 0],
    };
    let [(found, record)] = offenders[..] else {
        panic!("expected one offender record, got {offenders:?}");
    };
    assert_eq!(found, key);
    assert_eq!((record.attempts, record.window_attempts), (5, 5));
    assert_eq!(record.group, 1);
    assert_eq!(record.last_destination[..4], [198, 51, 100, 7]);
    assert_eq!(record.last_dport, 25);
    let bits = record.destination_sketch.count_ones();
    assert!(
        (1..=3).contains(&bits),
        "3 destinations set {bits} sketch bits"
    );
    assert!(record.first_seen_ns <= record.last_seen_ns);

    let stats = dataplane.action_stats().unwrap();
    assert_eq!(stats[ActionStat::OffenderAlerts as usize], 1);
    assert_eq!(
        stats[ActionStat::EventsSent as usize],
        6,
        "5 samples and 1 alert"
    );
    assert_eq!(stats[ActionStat::EventsSuppressed as usize], 0);

    let mut ring = dataplane.take_events().expect("the events ring buffer");
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<Event>());
        // SAFETY: the kernel wrote a whole Event (checked size); read unaligned.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
    }
    let samples: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Sample as u32)
        .collect();
    let alerts: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Offender as u32)
        .collect();
    assert_eq!((samples.len(), alerts.len()), (5, 1), "{events:?}");
    let first = samples[0];
    assert_eq!(first.source[..4], [100, 64, 0, 10]);
    assert_eq!(first.destination[..4], [203, 0, 113, 9]);
    assert_eq!((first.dport, first.verdict), (25, Verdict::Drop as u32));
    assert_eq!(first.reason, Reason::Blocked as u32);
    assert_eq!(first.tcp_flags, 0x02);
    assert_eq!(alerts[0].attempts, 3);
    assert_eq!(alerts[0].source[..8], key.address);
}

#[test]
fn drop_events_are_rate_limited_in_the_kernel() {
    let mut dataplane = load(&image(|c| {
        c.action = Action::Reject as u32;
        // One event per minute, burst 2: a flood yields two.
        c.event_interval_ns = Duration::from_secs(60).as_nanos() as u64;
        c.event_tolerance_ns = c.event_interval_ns;
    }));
    let frame = syn(v4(100, 64, 0, 10), REMOTE_V4);
    for _ in 0..50 {
        assert_eq!(
            outcome(&dataplane, &frame),
            (Verdict::Reject, Reason::Blocked)
        );
    }
    let stats = dataplane.action_stats().unwrap();
    assert_eq!(stats[ActionStat::EventsSent as usize], 2);
    assert_eq!(stats[ActionStat::EventsSuppressed as usize], 48);
    let mut ring = dataplane.take_events().unwrap();
    let mut verdicts = Vec::new();
    while let Some(item) = ring.next() {
        // SAFETY: as above.
        let event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
        verdicts.push(event.verdict);
    }
    assert_eq!(verdicts, [Verdict::Reject as u32, Verdict::Reject as u32]);
}
