//! Latency samples and how they are summarised.
//!
//! Every sample is kept (microseconds in a `u32`, four bytes each, a few million at most)
//! and sorted once at the end, so percentiles are exact rather than bucketed. Percentiles
//! use the nearest-rank rule: p99 is the smallest sample that at least 99 % of samples do
//! not exceed.

use std::time::{Duration, Instant};

/// p50, p99 and max of one set of samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// How many samples.
    pub count: usize,
    /// Median, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Largest sample, µs.
    pub max_us: u64,
}

/// Summarises samples in microseconds; `None` when there are none.
pub fn summarize(mut samples: Vec<u32>) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = |p: f64| -> u64 {
        let n = samples.len();
        let index = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
        u64::from(samples[index])
    };
    Some(Summary {
        count: samples.len(),
        p50_us: rank(50.0),
        p99_us: rank(99.0),
        max_us: rank(100.0),
    })
}

/// Microseconds from `epoch` to now, saturating (a `u64` of µs lasts 584,000 years).
pub fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A duration as a latency sample, saturating at `u32::MAX` µs (71 minutes).
pub fn sample_us(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

/// `1234` µs as `1.23 ms`, keeping three significant digits below 10 ms.
pub fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 1.0 {
        format!("{ms:.3} ms")
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// A count with thousands separators: `75000` as `75,000`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate rounded to a whole number, with separators.
pub fn rate(per_second: f64) -> String {
    if per_second < 100.0 {
        format!("{per_second:.1}")
    } else {
        count(per_second.round() as u64)
    }
}

/// KiB as `1,234 KiB (1.21 MiB)`.
pub fn kib(kib: u64) -> String {
    format!("{} KiB ({:.2} MiB)", count(kib), kib as f64 / 1024.0)
}
