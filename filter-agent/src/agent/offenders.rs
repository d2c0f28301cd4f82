//! Offender records as the abuse desk reads them: the destination estimate, the alert
//! settings in force, the sources over the threshold, and the ranking and rows of
//! `filter-agent offenders`.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use filter_common::{Config, DESTINATION_SKETCH_BITS, Family, Offender, SourceKey, records};

use super::clock::Clock;
use crate::control::protocol::OffenderRow;

/// Distinct destinations estimated from the sketch by linear counting:
/// n = -m ln(zeros / m) for m bits. Close to exact for a handful of destinations; when
/// every bit is set the estimate saturates at m ln m (about 266) and `saturated` says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Estimate {
    pub value: u64,
    pub saturated: bool,
}

impl Estimate {
    pub fn of(sketch: u64) -> Estimate {
        let m = f64::from(DESTINATION_SKETCH_BITS);
        let zeros = DESTINATION_SKETCH_BITS - sketch.count_ones();
        let (zeros, saturated) = if zeros == 0 {
            (1, true)
        } else {
            (zeros, false)
        };
        Estimate {
            value: (m * (m / f64::from(zeros)).ln()).round() as u64,
            saturated,
        }
    }

    /// `≈3`, or `≥266` when saturated.
    pub fn text(&self) -> String {
        format!("{}{}", if self.saturated { "≥" } else { "≈" }, self.value)
    }
}

/// The alert settings in force, as a policy writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertSettings {
    /// 0: no alerts.
    pub threshold: u64,
    pub window_ns: u64,
}

impl AlertSettings {
    pub fn of(config: &Config) -> AlertSettings {
        AlertSettings {
            threshold: config.offender_alert_after,
            window_ns: config.offender_window_ns,
        }
    }

    pub fn window_text(&self) -> String {
        duration_text(self.window_ns)
    }

    /// Whether a record's window is still running at `now_ns`.
    pub fn window_running(&self, record: &Offender, now_ns: u64) -> bool {
        // Without `offenders` in the policy the kernel keeps one window for all time.
        record.window_attempts > 0
            && (self.window_ns == 0
                || now_ns < record.window_start_ns.saturating_add(self.window_ns))
    }

    /// Whether a record is over the threshold: alerts on, as many attempts as the threshold
    /// in a window that has not ended.
    pub fn over_threshold(&self, record: &Offender, now_ns: u64) -> bool {
        self.threshold != 0
            && record.window_attempts >= self.threshold
            && self.window_running(record, now_ns)
    }
}

/// `10m`, `1h 30m`, `90s`: a duration as a policy would write it.
pub fn duration_text(ns: u64) -> String {
    humantime::format_duration(Duration::from_nanos(ns)).to_string()
}

/// `address:port`, with IPv6 in brackets.
pub fn endpoint_text(family_code: u32, bytes: [u8; 16], port: u16) -> String {
    match records::address(family_code, &bytes) {
        Some(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => "-".into(),
    }
}

/// The sources that raised an alert and whose alert window has not ended yet, each with
/// the monotonic time its window ends.
#[derive(Debug, Default)]
pub struct OverThreshold {
    until: HashMap<SourceKey, u64>,
}

impl OverThreshold {
    /// Records an alert for `key` whose window ends at `until_ns`.
    pub fn alert(&mut self, key: SourceKey, until_ns: u64) {
        let until = self.until.entry(key).or_insert(until_ns);
        *until = (*until).max(until_ns);
    }

    /// Forgets the sources whose window has ended; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let before = self.until.len();
        self.until.retain(|_, until| *until > now_ns);
        before - self.until.len()
    }

    /// Sources over the threshold at `now_ns`.
    pub fn count(&self, now_ns: u64) -> usize {
        self.until.values().filter(|&&until| until > now_ns).count()
    }

    /// When the alert window of an alert raised at `event_ns` ends: from the record's
    /// window start if the record still holds that window, else (evicted, or a new window
    /// already) counted from the alert itself, which errs on the long side.
    pub fn window_end(record: Option<&Offender>, event_ns: u64, settings: AlertSettings) -> u64 {
        let start = match record {
            Some(r)
                if r.window_start_ns <= event_ns
                    && event_ns < r.window_start_ns.saturating_add(settings.window_ns) =>
            {
                r.window_start_ns
            }
            _ => event_ns,
        };
        start.saturating_add(settings.window_ns)
    }
}

impl OffenderRow {
    pub fn new(
        key: &SourceKey,
        record: &Offender,
        group: String,
        settings: AlertSettings,
        clock: &Clock,
    ) -> OffenderRow {
        let destinations = Estimate::of(record.destination_sketch);
        OffenderRow {
            source: key.to_string(),
            family: Family::from_code(key.family),
            group,
            attempts: record.attempts,
            in_window: if settings.window_running(record, clock.monotonic_ns) {
                record.window_attempts
            } else {
                0
            },
            first_seen: humantime::format_rfc3339_seconds(clock.wall_of(record.first_seen_ns))
                .to_string(),
            last_seen: humantime::format_rfc3339_seconds(clock.wall_of(record.last_seen_ns))
                .to_string(),
            destinations: destinations.value,
            destinations_saturated: destinations.saturated,
            last_destination: endpoint_text(key.family, record.last_destination, record.last_dport),
            over_threshold: settings.over_threshold(record, clock.monotonic_ns),
            subscriber: None,
        }
    }
}

/// The abuse desk's order: most attempts in the current window first, then most attempts
/// overall, then the most recently seen. Sorts the raw records, so that only the rows
/// shown need formatting.
pub fn rank(records: &mut [(SourceKey, Offender)], settings: AlertSettings, now_ns: u64) {
    let in_window = |record: &Offender| {
        if settings.window_running(record, now_ns) {
            record.window_attempts
        } else {
            0
        }
    };
    records.sort_by(|(a_key, a), (b_key, b)| {
        in_window(b)
            .cmp(&in_window(a))
            .then(b.attempts.cmp(&a.attempts))
            .then(b.last_seen_ns.cmp(&a.last_seen_ns))
            .then(a_key.cmp(b_key))
    });
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    const MINUTE: u64 = 60_000_000_000;

    #[test]
    fn linear_counting_is_close_for_a_few_and_saturates() {
        assert_eq!(
            Estimate::of(0),
            Estimate {
                value: 0,
                saturated: false
            }
        );
        for n in 1..=7u32 {
            let sketch = (1u64 << n) - 1;
            assert_eq!(Estimate::of(sketch).value, u64::from(n), "{n} bits");
        }
        // From 8 bits on the estimate allows for destinations that shared a bit.
        assert_eq!(Estimate::of(0xff).value, 9);
        // 32 bits set: 64 ln 2 = 44.4.
        assert_eq!(Estimate::of(u32::MAX as u64).value, 44);
        let full = Estimate::of(u64::MAX);
        assert_eq!(
            full,
            Estimate {
                value: 266,
                saturated: true
            }
        );
        assert_eq!(full.text(), "≥266");
        assert_eq!(Estimate::of(0b101).text(), "≈2");
        // One bit short of full: the largest unsaturated estimate.
        assert_eq!(Estimate::of(u64::MAX >> 1).value, 266);
        assert!(!Estimate::of(u64::MAX >> 1).saturated);
    }

    #[test]
    fn over_threshold_sources_expire_with_their_window() {
        let mut set = OverThreshold::default();
        let a = SourceKey {
            family: 1,
            address: [100, 64, 0, 10, 0, 0, 0, 0],
        };
        let b = SourceKey {
            family: 2,
            address: [0x20, 0x01, 0x0d, 0xb8, 0x10, 0, 0, 0],
        };
        assert_eq!(set.count(0), 0);
        set.alert(a, 10 * MINUTE);
        set.alert(b, 12 * MINUTE);
        assert_eq!(set.count(MINUTE), 2);
        // A second alert for the same source (a later window) extends it, never shortens.
        set.alert(a, 5 * MINUTE);
        assert_eq!(set.count(10 * MINUTE - 1), 2);
        assert_eq!(set.count(10 * MINUTE), 1, "a's window ended");
        assert_eq!(set.expire(10 * MINUTE), 1);
        assert_eq!(set.count(10 * MINUTE), 1);
        set.alert(a, 25 * MINUTE);
        assert_eq!(set.expire(12 * MINUTE), 1);
        assert_eq!(set.count(12 * MINUTE), 1);
        assert_eq!(set.expire(25 * MINUTE), 1);
        assert_eq!(set.count(0), 0);
    }

    #[test]
    fn the_alert_window_ends_where_the_record_says() {
        let settings = AlertSettings {
            threshold: 3,
            window_ns: 10 * MINUTE,
        };
        let record = Offender {
            window_start_ns: 100 * MINUTE,
            window_attempts: 3,
            ..Offender::default()
        };
        assert_eq!(
            OverThreshold::window_end(Some(&record), 104 * MINUTE, settings),
            110 * MINUTE
        );
        // The record moved on to a later window, or is gone: count from the alert.
        assert_eq!(
            OverThreshold::window_end(Some(&record), 111 * MINUTE, settings),
            121 * MINUTE
        );
        assert_eq!(
            OverThreshold::window_end(None, 104 * MINUTE, settings),
            114 * MINUTE
        );
    }

    #[test]
    fn offender_rows() {
        let c = Clock::fixed();
        let settings = AlertSettings {
            threshold: 3,
            window_ns: MINUTE,
        };
        let key = SourceKey {
            family: Family::Ipv4 as u32,
            address: [100, 64, 0, 10, 0, 0, 0, 0],
        };
        let record = Offender {
            attempts: 7,
            first_seen_ns: c.monotonic_ns - 90_000_000_000,
            last_seen_ns: c.monotonic_ns - 2_000_000_000,
            window_start_ns: c.monotonic_ns - 30_000_000_000,
            window_attempts: 4,
            destination_sketch: 0b1011,
            last_destination: [203, 0, 113, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            last_dport: 25,
            padding: 0,
            group: 1,
        };
        let row = OffenderRow::new(&key, &record, "residential".into(), settings, &c);
        assert_eq!(
            row,
            OffenderRow {
                source: "100.64.0.10".into(),
                family: Family::Ipv4,
                group: "residential".into(),
                attempts: 7,
                in_window: 4,
                first_seen: "2026-09-21T14:11:50Z".into(),
                last_seen: "2026-09-21T14:13:18Z".into(),
                destinations: 3,
                destinations_saturated: false,
                last_destination: "203.0.113.9:25".into(),
                over_threshold: true,
                subscriber: None,
            }
        );
        // The window ended: nothing in it, not over the threshold any more.
        let later = Clock {
            monotonic_ns: c.monotonic_ns + 30_000_000_000,
            wall: c.wall + Duration::from_secs(30),
        };
        let row = OffenderRow::new(&key, &record, "residential".into(), settings, &later);
        assert_eq!((row.in_window, row.over_threshold), (0, false));
        assert_eq!(row.first_seen, "2026-09-21T14:11:50Z");
        // Below the threshold, or alerts off.
        let few = Offender {
            window_attempts: 2,
            ..record
        };
        assert!(!OffenderRow::new(&key, &few, "r".into(), settings, &c).over_threshold);
        let off = AlertSettings {
            threshold: 0,
            ..settings
        };
        let row = OffenderRow::new(&key, &record, "r".into(), off, &c);
        assert!(!row.over_threshold);
        assert_eq!(row.in_window, 4);
        // A policy without `offenders`: the kernel's one window spans all time.
        let none = AlertSettings {
            threshold: 0,
            window_ns: 0,
        };
        let row = OffenderRow::new(&key, &record, "r".into(), none, &later);
        assert_eq!((row.in_window, row.over_threshold), (4, false));
        assert_eq!(row.attempts, 7);

        let v6 = SourceKey {
            family: Family::Ipv6 as u32,
            address: [0x20, 0x01, 0x0d, 0xb8, 0x10, 0, 0, 0x42],
        };
        let record = Offender {
            last_destination: "2001:db8:ffff::9".parse::<Ipv6Addr>().unwrap().octets(),
            ..record
        };
        let row = OffenderRow::new(&v6, &record, "residential".into(), settings, &c);
        assert_eq!(row.source, "2001:db8:1000:42::/64");
        assert_eq!(row.last_destination, "[2001:db8:ffff::9]:25");
    }

    #[test]
    fn ranking_puts_the_current_window_first() {
        let settings = AlertSettings {
            threshold: 3,
            window_ns: MINUTE,
        };
        let now = 10 * MINUTE;
        let record = |n: u8, attempts, window_attempts, window_start_ns, last_seen_ns| {
            (
                SourceKey {
                    family: 1,
                    address: [10, 0, 0, n, 0, 0, 0, 0],
                },
                Offender {
                    attempts,
                    window_attempts,
                    window_start_ns,
                    last_seen_ns,
                    ..Offender::default()
                },
            )
        };
        let mut records = vec![
            // The most attempts ever, but its window ended.
            record(1, 1000, 900, now - 2 * MINUTE, now - MINUTE),
            record(2, 10, 5, now - 1, 1),
            record(3, 20, 5, now - 1, 1),
            record(4, 20, 5, now - 1, 2),
            record(5, 20, 5, now - 1, 2),
            record(6, 30, 6, now - 1, 0),
        ];
        rank(&mut records, settings, now);
        let order: Vec<u8> = records.iter().map(|(k, _)| k.address[3]).collect();
        assert_eq!(order, [6, 4, 5, 3, 2, 1]);
    }
}
