//! What the program tells userspace about frames it stops: the offender record of each
//! blocked source and sampled drop events, both off the pass path.

use aya_ebpf::programs::XdpContext;
use filter_common::{
    ActionStat, Config, EVENT_OFFENDER, EVENT_SAMPLE, Event, Family, Offender, SourceKey,
};

use crate::{
    decide::{Decision, source_key},
    maps::{self, EVENTS, OFFENDERS},
    parse::Cursor,
};

/// Records a dropped, rejected or monitored frame.
#[inline(always)]
pub fn observe(ctx: &XdpContext, decision: &Decision) {
    let Some(config) = maps::config() else {
        return;
    };
    let cur = Cursor::new(ctx);
    let now = maps::now_ns();
    let (source, destination) = addresses(&cur, decision.family, decision.l3);
    let (sport, dport, flags) = tcp_fields(&cur, decision.l4);
    if decision.blocked_attempt
        && let Some(key) = source_key(&cur, decision.family, decision.l3)
        && let Some(attempts) = offender(config, &key, decision, destination, dport, now)
    {
        let mut key_address = [0u8; 16];
        key_address[..8].copy_from_slice(&key.address);
        send(Event {
            time_ns: now,
            kind: EVENT_OFFENDER,
            ifindex: ctx.ingress_ifindex() as u32,
            family: decision.family as u32,
            verdict: decision.verdict,
            reason: decision.reason as u32,
            group: decision.group,
            source: key_address,
            destination,
            sport,
            dport,
            tcp_flags: flags as u32,
            attempts,
        });
        maps::count_action(ActionStat::OffenderAlerts);
    }
    if config.event_interval_ns == 0 {
        return;
    }
    if !maps::event_token(config, now) {
        maps::count_action(ActionStat::EventsSuppressed);
        return;
    }
    send(Event {
        time_ns: now,
        kind: EVENT_SAMPLE,
        ifindex: ctx.ingress_ifindex() as u32,
        family: decision.family as u32,
        verdict: decision.verdict,
        reason: decision.reason as u32,
        group: decision.group,
        source,
        destination,
        sport,
        dport,
        tcp_flags: flags as u32,
        attempts: 0,
    });
}

#[inline(always)]
fn send(event: Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
            maps::count_action(ActionStat::EventsSent);
        }
        None => maps::count_action(ActionStat::EventsLost),
    }
}

/// Counts a blocked attempt in the source's record. Returns the attempts in the current
/// window when they just reached the alert threshold. Two CPUs updating one record at
/// the same moment may lose a count; the figures are for triage, not billing.
#[inline(always)]
fn offender(
    config: &Config,
    key: &SourceKey,
    decision: &Decision,
    destination: [u8; 16],
    dport: u16,
    now: u64,
) -> Option<u64> {
    let sketch_bit = 1u64 << (destination_hash(&destination) & 63);
    let in_window = match OFFENDERS.get_ptr_mut(key) {
        Some(record) => {
            // SAFETY: a value of the map, valid while the program runs.
            let record = unsafe { &mut *record };
            record.attempts += 1;
            record.last_seen_ns = now;
            record.destination_sketch |= sketch_bit;
            record.last_destination = destination;
            record.last_dport = dport;
            record.group = decision.group;
            if now.wrapping_sub(record.window_start_ns) >= config.offender_window_ns {
                record.window_start_ns = now;
                record.window_attempts = 1;
            } else {
                record.window_attempts += 1;
            }
            record.window_attempts
        }
        None => {
            let record = Offender {
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
            let _ = OFFENDERS.insert(key, &record, 0);
            1
        }
    };
    (config.offender_alert_after != 0 && in_window == config.offender_alert_after)
        .then_some(in_window)
}

/// Spreads destinations over the 64 bits of the sketch (multiplicative hashing).
#[inline(always)]
fn destination_hash(destination: &[u8; 16]) -> u32 {
    let mut folded = 0u32;
    for chunk in destination.chunks_exact(4) {
        folded ^= u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    folded.wrapping_mul(0x9e37_79b1) >> 26
}

/// Source and destination address, IPv4 in the first 4 bytes; zero where not in the frame.
#[inline(always)]
fn addresses(cur: &Cursor, family: Family, l3: usize) -> ([u8; 16], [u8; 16]) {
    let mut source = [0u8; 16];
    let mut destination = [0u8; 16];
    if l3 == 0 {
        return (source, destination);
    }
    match family {
        Family::Ipv4 => {
            if let Some(a) = cur.header::<[u8; 4]>(l3 + 12) {
                source[..4].copy_from_slice(a);
            }
            if let Some(a) = cur.header::<[u8; 4]>(l3 + 16) {
                destination[..4].copy_from_slice(a);
            }
        }
        Family::Ipv6 => {
            if let Some(a) = cur.header::<[u8; 16]>(l3 + 8) {
                source = *a;
            }
            if let Some(a) = cur.header::<[u8; 16]>(l3 + 24) {
                destination = *a;
            }
        }
        Family::Other => {}
    }
    (source, destination)
}

/// Source port, destination port and flags, zero where not in the frame.
#[inline(always)]
fn tcp_fields(cur: &Cursor, l4: usize) -> (u16, u16, u8) {
    if l4 == 0 {
        return (0, 0, 0);
    }
    let (sport, dport) = match cur.header::<[u16; 2]>(l4) {
        Some(ports) => (u16::from_be(ports[0]), u16::from_be(ports[1])),
        None => (0, 0),
    };
    (sport, dport, cur.tcp_flags(l4).unwrap_or(0))
}
