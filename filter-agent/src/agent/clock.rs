//! Kernel times are `bpf_ktime_get_coarse_ns`, i.e. CLOCK_MONOTONIC at tick resolution;
//! [`Clock`] pairs a reading of it with the wall clock to turn them into dates.

use std::time::{Duration, SystemTime};

use nix::time::{ClockId, clock_gettime};

/// The monotonic clock (the kernel's event clock) and the wall clock, read together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub monotonic_ns: u64,
    pub wall: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            monotonic_ns: monotonic_ns(),
            wall: SystemTime::now(),
        }
    }

    /// A fixed reading for tests: 1,000 s of uptime at 2026-09-21T13:46:40Z.
    #[cfg(test)]
    pub fn fixed() -> Clock {
        Clock {
            monotonic_ns: 1_000 * 1_000_000_000,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        }
    }

    /// The wall-clock time of a kernel timestamp.
    pub fn wall_of(&self, kernel_ns: u64) -> SystemTime {
        if kernel_ns <= self.monotonic_ns {
            self.wall - Duration::from_nanos(self.monotonic_ns - kernel_ns)
        } else {
            self.wall + Duration::from_nanos(kernel_ns - self.monotonic_ns)
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_coarse_ns`.
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC always exists");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_times_become_wall_times() {
        let c = Clock::fixed();
        assert_eq!(c.wall_of(c.monotonic_ns), c.wall);
        assert_eq!(
            c.wall_of(c.monotonic_ns - 1_500_000_000),
            c.wall - Duration::from_millis(1500)
        );
        assert_eq!(
            c.wall_of(c.monotonic_ns + 2_000_000),
            c.wall + Duration::from_millis(2)
        );
        let real = Clock::now();
        let later = monotonic_ns();
        assert!(later >= real.monotonic_ns);
    }
}
