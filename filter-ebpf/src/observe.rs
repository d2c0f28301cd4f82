//! What the program tells userspace about frames it stops: the offender record of each
//! blocked source and sampled drop events, both off the pass path.

use aya_ebpf::programs::XdpContext;
use filter_common::{
    ActionStat, Config, Event, EventKind, Family, OFFENDER_SETS, Offender, OffenderSet, Reason,
    RecentSource, SourceKey, wire::is_connection_request,
};

use crate::{
    cursor::Cursor,
    decide::source_key,
    decision::Decision,
    headers::join,
    limit,
    maps::{self, EVENTS, OFFENDERS, RECENT_SOURCES},
};

/// Remembers a source that asked to connect to a filtered port, for `plan`. Connection
/// requests only: one LRU update per connection, not per segment. Not blocked ones: the
/// source's offender record counts those, and `plan` reads both maps; so a blocked frame
/// pays for one LRU update, not two.
#[inline(always)]
pub fn remember_source(cur: &Cursor, decision: &Decision) {
    if decision.blocked_attempt
        || matches!(decision.reason, Reason::Malformed)
        || !cur
            .tcp_flags(decision.l4)
            .is_some_and(is_connection_request)
    {
        return;
    }
    let Some(key) = source_key(cur, decision.family, decision.l3) else {
        return;
    };
    let now = maps::coarse_now_ns();
    match RECENT_SOURCES.get_ptr_mut(key) {
        // SAFETY: a value of the map, valid while the program runs; two CPUs updating
        // one record at once may lose a count.
        Some(record) => unsafe {
            (*record).attempts += 1;
            (*record).last_seen_ns = now;
        },
        None => {
            let record = RecentSource {
                attempts: 1,
                first_seen_ns: now,
                last_seen_ns: now,
            };
            let _ = RECENT_SOURCES.insert(key, record, 0);
        }
    }
}

/// Records a dropped, rejected or monitored frame.
#[inline(always)]
pub fn observe(ctx: &XdpContext, config: &Config, decision: &Decision) {
    let cur = Cursor::new(ctx);
    let now = maps::coarse_now_ns();
    let ports = tcp_ports(&cur, decision.l4);
    if decision.blocked_attempt
        && let Some(key) = source_key(&cur, decision.family, decision.l3)
    {
        let destination = address(&cur, decision.family, decision.l3, Side::Destination);
        if let Some(attempts) = offender(config, &key, decision, destination, ports[1], now) {
            let [a, b] = key_words(&key);
            send(
                ctx,
                &cur,
                decision,
                EventKind::Offender,
                [a, b, 0, 0],
                destination,
                ports,
                now,
                attempts,
            );
            maps::count_action(ActionStat::OffenderAlerts);
        }
    }
    if config.event_interval_ns == 0 {
        return;
    }
    if !limit::event_token(config, now) {
        maps::count_action(ActionStat::EventsSuppressed);
        return;
    }
    let source = address(&cur, decision.family, decision.l3, Side::Source);
    let destination = address(&cur, decision.family, decision.l3, Side::Destination);
    send(
        ctx,
        &cur,
        decision,
        EventKind::Sample,
        source,
        destination,
        ports,
        now,
        0,
    );
}

/// Writes one event straight into the ring buffer.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn send(
    ctx: &XdpContext,
    cur: &Cursor,
    decision: &Decision,
    kind: EventKind,
    source: [u32; 4],
    destination: [u32; 4],
    [sport, dport]: [u16; 2],
    now: u64,
    attempts: u64,
) {
    let Some(mut entry) = EVENTS.reserve_untyped::<Event>(0) else {
        maps::count_action(ActionStat::EventsLost);
        return;
    };
    let flags = if decision.l4 == 0 {
        0
    } else {
        cur.tcp_flags(decision.l4).unwrap_or(0)
    };
    entry.write(Event {
        time_ns: now,
        kind: kind as u32,
        ifindex: ctx.ingress_ifindex() as u32,
        family: decision.family as u32,
        verdict: decision.verdict as u32,
        reason: decision.reason as u32,
        group: decision.group,
        source: as_bytes(source),
        destination: as_bytes(destination),
        sport,
        dport,
        tcp_flags: flags as u32,
        attempts,
    });
    entry.submit(0);
    maps::count_action(ActionStat::EventsSent);
}

/// Counts a blocked attempt in the source's record. Returns the attempts in the current
/// window when they just reached the alert threshold. Two CPUs updating one set at the
/// same moment may lose a count or, for two sources of one set, mix their records; the
/// figures are for triage, not billing.
#[inline(always)]
fn offender(
    config: &Config,
    key: &SourceKey,
    decision: &Decision,
    destination: [u32; 4],
    dport: u16,
    now: u64,
) -> Option<u64> {
    let set = OFFENDERS.get_ptr_mut(OffenderSet::index(key, OFFENDER_SETS))?;
    // SAFETY: a value of the map, valid while the program runs.
    let [first, second] = unsafe { &mut (*set).ways };
    let sketch_bit = 1u64 << (destination_hash(destination) & 63);
    let destination = as_bytes(destination);
    let slot = if first.key.is(key) {
        first
    } else if second.key.is(key) {
        second
    } else {
        // A new source takes the way seen least recently (a free one never was).
        let slot = if first.record.last_seen_ns <= second.record.last_seen_ns {
            first
        } else {
            second
        };
        slot.key = *key;
        slot.record = Offender {
            attempts: 1,
            first_seen_ns: now,
            last_seen_ns: now,
            window_start_ns: now,
            window_attempts: 1,
            destination_sketch: sketch_bit,
            last_destination: destination,
            last_dport: dport,
            padding: 0,
            group: decision.group,
        };
        return alert(config, 1);
    };
    let record = &mut slot.record;
    record.attempts += 1;
    record.last_seen_ns = now;
    record.destination_sketch |= sketch_bit;
    record.last_destination = destination;
    record.last_dport = dport;
    record.group = decision.group;
    // Without an alert window configured, one window spans all time.
    if config.offender_window_ns != 0
        && now.wrapping_sub(record.window_start_ns) >= config.offender_window_ns
    {
        record.window_start_ns = now;
        record.window_attempts = 1;
    } else {
        record.window_attempts += 1;
    }
    alert(config, record.window_attempts)
}

/// The attempts in the window when they just reached the alert threshold.
#[inline(always)]
fn alert(config: &Config, in_window: u64) -> Option<u64> {
    (config.offender_alert_after != 0 && in_window == config.offender_alert_after)
        .then_some(in_window)
}

/// Spreads destinations over the 64 bits of the sketch (multiplicative hashing).
#[inline(always)]
fn destination_hash(destination: [u32; 4]) -> u32 {
    let folded = destination[0] ^ destination[1] ^ destination[2] ^ destination[3];
    folded.wrapping_mul(0x9e37_79b1) >> 26
}

enum Side {
    Source,
    Destination,
}

/// An address as four native words of its network-order bytes (IPv4 in the first);
/// zero when not in the frame. Words, not bytes, so no byte-wise zeroing loop is emitted.
#[inline(always)]
fn address(cur: &Cursor, family: Family, l3: usize, side: Side) -> [u32; 4] {
    if l3 == 0 {
        return [0; 4];
    }
    match family {
        Family::Ipv4 => {
            let offset = match side {
                Side::Source => l3 + 12,
                Side::Destination => l3 + 16,
            };
            match cur.header::<[u16; 2]>(offset) {
                Some(words) => [join(*words), 0, 0, 0],
                None => [0; 4],
            }
        }
        Family::Ipv6 => {
            let offset = match side {
                Side::Source => l3 + 8,
                Side::Destination => l3 + 24,
            };
            match cur.header::<[u16; 8]>(offset) {
                // SAFETY: same size, plain integers; byte order kept as read.
                Some(words) => unsafe { core::mem::transmute::<[u16; 8], [u32; 4]>(*words) },
                None => [0; 4],
            }
        }
        Family::Other => [0; 4],
    }
}

#[inline(always)]
fn as_bytes(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, plain integers.
    unsafe { core::mem::transmute(words) }
}

#[inline(always)]
fn key_words(key: &SourceKey) -> [u32; 2] {
    // SAFETY: same size, plain integers.
    unsafe { core::mem::transmute(key.address) }
}

/// Source and destination port, zero where not in the frame.
#[inline(always)]
fn tcp_ports(cur: &Cursor, l4: usize) -> [u16; 2] {
    if l4 == 0 {
        return [0, 0];
    }
    match cur.header::<[u16; 2]>(l4) {
        Some(ports) => [u16::from_be(ports[0]), u16::from_be(ports[1])],
        None => [0, 0],
    }
}
