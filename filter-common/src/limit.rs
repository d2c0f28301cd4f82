//! GCRA, the token bucket as one timestamp, shared by the kernel's relay limit and drop
//! event sampler and by the reference model.

/// A request at `now` conforms while the theoretical arrival time `tat` is at most
/// `tolerance` ahead of now; a conforming request moves `tat` on by `interval`. Returns
/// the new `tat`, or `None` when over the limit. With `tolerance = (burst - 1) *
/// interval` it passes `burst` back-to-back requests and then one per `interval`.
#[inline(always)]
pub fn gcra(tat: Option<u64>, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    let tat = match tat {
        Some(tat) if tat > now => tat,
        _ => now,
    };
    if tat - now > tolerance {
        return None;
    }
    Some(tat + interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let (interval, burst) = (100, 3);
        let tolerance = (burst - 1) * interval;
        let mut tat = None;
        for _ in 0..burst {
            tat = Some(gcra(tat, 0, interval, tolerance).expect("inside the burst"));
        }
        assert_eq!(gcra(tat, 0, interval, tolerance), None);
        assert_eq!(gcra(tat, 99, interval, tolerance), None);
        assert!(gcra(tat, 100, interval, tolerance).is_some());
    }

    #[test]
    fn an_idle_bucket_refills_to_the_burst_only() {
        let tat = gcra(None, 0, 100, 100);
        // Long after: the bucket starts from now, not from the old tat.
        assert_eq!(gcra(tat, 10_000, 100, 100), Some(10_100));
    }
}
