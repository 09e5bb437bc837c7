//! Wall-clock times for events stamped by the monotonic clock (the kernel
//! side's bpf_ktime_get_ns): a pair of readings of both clocks, taken
//! together at attach and kept in the recording's header, maps one to the
//! other. Shown as RFC 3339 in UTC beside the boot-relative time, which stays
//! (the wall clock can be stepped; the monotonic one cannot).
use crate::recording::Header;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    mono_ns: u64,
    wall_ns: u64,
}

impl Clock {
    /// From a recording's header; None when it holds no wall-clock reading.
    pub fn of(h: &Header) -> Option<Clock> {
        (h.wall_start_ns > 0).then_some(Clock {
            mono_ns: h.mono_start_ns,
            wall_ns: h.wall_start_ns,
        })
    }

    /// Unix ns of monotonic `ns`.
    pub fn wall_ns(&self, ns: u64) -> u64 {
        (self.wall_ns as i128 + ns as i128 - self.mono_ns as i128).max(0) as u64
    }

    /// RFC 3339 (UTC, microseconds) of monotonic `ns`.
    pub fn rfc3339(&self, ns: u64) -> String {
        rfc3339(self.wall_ns(ns))
    }
}

/// `2026-12-03T17:18:24.123456Z` for Unix time `ns`.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ns % 1_000_000_000 / 1000
    )
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // date -u -d @1764782304.123456 (leap year, end of February after).
        assert_eq!(
            rfc3339(1_764_782_304_123_456_789),
            "2025-12-03T17:18:24.123456Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(4_107_542_399_000_000_000),
            "2100-02-28T23:59:59.000000Z"
        );
    }

    #[test]
    fn monotonic_times_map_through_the_pair() {
        let h = Header {
            mono_start_ns: 5_000_000_000,
            wall_start_ns: 1_764_782_304_000_000_000,
            ..Header::default()
        };
        let c = Clock::of(&h).unwrap();
        assert_eq!(c.rfc3339(7_500_000_000), "2025-12-03T17:18:26.500000Z");
        assert_eq!(Clock::of(&Header::default()), None);
    }
}
