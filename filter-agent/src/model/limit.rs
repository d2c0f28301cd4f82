//! The relay limit as the kernel keeps it: one GCRA timestamp per [`SourceKey`] (an IPv4
//! address or an IPv6 /64), advanced by `filter_common::gcra`, the function the kernel
//! program runs too. The clock is whatever the caller passes, so tests choose it.

use std::collections::HashMap;

use filter_common::{Config, SourceKey, gcra};

/// The buckets of the relay limit: source -> theoretical arrival time (ns). Unlike the
/// kernel's LRU map it never evicts; the tests stay far below its 65,536 entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayLimiter {
    buckets: HashMap<SourceKey, u64>,
}

impl RelayLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// One connection request from `key` to a relay at `now_ns` under `config`'s limit:
    /// `true` if it conforms (and is then counted against the bucket), `false` if it is
    /// over the limit (the bucket is left as it was). Without a limit every request
    /// conforms and nothing is stored.
    pub fn admit(&mut self, config: &Config, key: SourceKey, now_ns: u64) -> bool {
        if config.relay_interval_ns == 0 {
            return true;
        }
        let tat = self.buckets.get(&key).copied();
        match gcra(
            tat,
            now_ns,
            config.relay_interval_ns,
            config.relay_tolerance_ns,
        ) {
            Some(next) => {
                self.buckets.insert(key, next);
                true
            }
            None => false,
        }
    }

    /// The bucket's theoretical arrival time, if the source has one.
    pub fn tat(&self, key: &SourceKey) -> Option<u64> {
        self.buckets.get(key).copied()
    }

    /// The number of sources with a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}
