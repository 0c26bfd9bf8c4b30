//! A log-bucket latency histogram with bounded memory (HDR-like).
//!
//! Values below `2^SUB_BITS` get one bucket each (exact). Above that, every
//! power of two is split into `2^(SUB_BITS-1)` equal buckets, so a bucket is
//! at most 1/64 of its values wide: any reported value is within ~1.6% of
//! the true one (and the maximum is tracked exactly). The whole `u64` range
//! fits in ~3,800 counters (30 KiB).

/// Bits of precision: 7 gives 64 buckets per power of two above 128.
const SUB_BITS: u32 = 7;
const SUB_COUNT: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB_COUNT / 2;
/// Buckets for the exact range plus 64 per magnitude from 2^7 to 2^63.
const BUCKETS: usize = (SUB_COUNT + (64 - SUB_BITS as u64) * HALF) as usize;

/// Counts of recorded values (nanoseconds, for latencies).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("min", &self.min())
            .field("max", &self.max)
            .finish()
    }
}

/// The bucket index of `v`.
fn index_of(v: u64) -> usize {
    if v < SUB_COUNT {
        return v as usize;
    }
    let magnitude = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = magnitude - (SUB_BITS - 1);
    let top = v >> shift; // in [HALF, SUB_COUNT)
    (SUB_COUNT + u64::from(magnitude - SUB_BITS) * HALF + (top - HALF)) as usize
}

/// The largest value that falls in bucket `i`.
fn highest_of(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB_COUNT {
        return i;
    }
    let rel = i - SUB_COUNT;
    let magnitude = rel / HALF + u64::from(SUB_BITS);
    let top = rel % HALF + HALF;
    let shift = magnitude - u64::from(SUB_BITS - 1);
    // The bucket's lowest value is top << shift; its width is 1 << shift.
    (top << shift).saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index_of(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest recorded value (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The smallest recorded value (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// The arithmetic mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` in 0..=1: the smallest bucket whose
    /// cumulative count reaches `q` of the total, reported as that bucket's
    /// highest value (never above the exact maximum). 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest_of(i).min(self.max).max(self.min);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.9), 90);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn buckets_are_contiguous_and_bounded() {
        // Every bucket starts right after the previous one ends, up to u64::MAX.
        for i in 1..BUCKETS {
            assert_eq!(highest_of(i - 1) + 1, lowest(i), "bucket {i}");
        }
        assert_eq!(highest_of(BUCKETS - 1), u64::MAX);
        assert_eq!(index_of(u64::MAX), BUCKETS - 1);
        for v in [
            0,
            1,
            127,
            128,
            129,
            1000,
            123_456_789,
            1 << 40,
            u64::MAX / 3,
        ] {
            let i = index_of(v);
            assert!(lowest(i) <= v && v <= highest_of(i), "value {v} bucket {i}");
        }
    }

    fn lowest(i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            highest_of(i - 1) + 1
        }
    }

    #[test]
    fn large_values_within_relative_error() {
        let mut h = Histogram::new();
        let mut v: u64 = 1_000;
        let mut values = Vec::new();
        while v < 100_000_000_000 {
            h.record(v);
            values.push(v);
            v = v * 17 / 13;
        }
        values.sort_unstable();
        for q in [0.1, 0.5, 0.9, 0.99] {
            let rank = ((q * values.len() as f64).ceil() as usize).max(1);
            let exact = values[rank - 1] as f64;
            let got = h.quantile(q) as f64;
            assert!(
                got >= exact && (got - exact) / exact < 0.016,
                "q={q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), *values.last().unwrap());
    }

    #[test]
    fn quantiles_are_ordered_and_merge_adds() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for i in 0..10_000u64 {
            a.record(i * 997 % 50_000);
            b.record(1_000_000 + i);
        }
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m.count(), 20_000);
        assert_eq!(m.max(), b.max());
        assert_eq!(m.min(), 0);
        let qs: Vec<u64> = [0.5, 0.9, 0.99, 1.0]
            .iter()
            .map(|&q| m.quantile(q))
            .collect();
        assert!(qs.windows(2).all(|w| w[0] <= w[1]), "{qs:?}");
        // Half the values are below 50,000 (p50 within one bucket of it).
        assert!(m.quantile(0.5) < 51_000);
        assert!(m.quantile(0.51) >= 1_000_000);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        assert_eq!(h.max(), 0);
        assert_eq!(h.min(), 0);
        assert_eq!(h.mean(), 0.0);
        let mut m = Histogram::new();
        m.merge(&h);
        assert_eq!(m.count(), 0);
    }
}
