//! The kernel's side of the rate limits, each a GCRA bucket (`filter_common::gcra`, the
//! reference model's `model/limit.rs` uses the same function): the relay limit per
//! source and the drop-event sampler.

use filter_common::{Config, SourceKey, gcra};

use crate::maps::{EVENT_LIMIT, RELAY_BUCKETS, now_ns};

/// Takes a token from the source's relay bucket (see `filter_common::gcra`); false when
/// it is empty. Two CPUs updating one bucket at once may both pass: the limit is a
/// guard against floods, not an exact quota.
#[inline(always)]
pub fn relay_bucket_take(key: &SourceKey, interval: u64, tolerance: u64) -> bool {
    let now = now_ns();
    match RELAY_BUCKETS.get_ptr_mut(key) {
        Some(tat) => match gcra(Some(unsafe { *tat }), now, interval, tolerance) {
            Some(next) => {
                // SAFETY: a value of the map, valid while the program runs.
                unsafe { *tat = next };
                true
            }
            None => false,
        },
        None => {
            // A new source starts with a full bucket; if the insert fails (it cannot for
            // an LRU map short of memory), the SYN still passes: fail open on the relay.
            let next = gcra(None, now, interval, tolerance).unwrap_or(now);
            let _ = RELAY_BUCKETS.insert(key, next, 0);
            true
        }
    }
}

/// True when the sampler lets one more drop event out now.
#[inline(always)]
pub fn event_token(config: &Config, now: u64) -> bool {
    if config.event_interval_ns == 0 {
        return false;
    }
    let Some(tat) = EVENT_LIMIT.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the array's only value; a race between CPUs lets an extra event through.
    let current = unsafe { *tat };
    let stored = if current == 0 { None } else { Some(current) };
    match gcra(
        stored,
        now,
        config.event_interval_ns,
        config.event_tolerance_ns,
    ) {
        Some(next) => {
            unsafe { *tat = next };
            true
        }
        None => false,
    }
}
