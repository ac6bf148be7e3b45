//! Zipf sampling over ranks `0..n`: rank `k` has weight `1 / (k + 1)^s`.
//! Built from a cumulative table and a binary search, so one sample costs one
//! uniform draw and `log2(n)` comparisons; the seeded RNG makes it repeatable.

use rand::Rng;

/// A Zipf distribution over `0..n`.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n ≥ 1` ranks with exponent `s ≥ 0` (0 is uniform).
    pub fn new(n: usize, s: f64) -> Self {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false: there is at least one rank.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// Probability of rank `k`.
    pub fn probability(&self, k: usize) -> f64 {
        let prev = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf[k] - prev
    }

    /// One rank, 0 the most popular.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn frequencies_follow_the_weights() {
        let z = Zipf::new(10_000, 1.0);
        let h: f64 = (1..=10_000).map(|k| 1.0 / k as f64).sum();
        assert!((z.probability(0) - 1.0 / h).abs() < 1e-12);
        assert!((z.probability(1) * 2.0 - z.probability(0)).abs() < 1e-12);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 10_000];
        let n = 200_000;
        for _ in 0..n {
            counts[z.sample(&mut rng)] += 1;
        }
        let f0 = counts[0] as f64 / n as f64;
        assert!((f0 - 1.0 / h).abs() < 0.01, "rank 0 frequency {f0}");
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "rank0/rank1 = {ratio}");
        // The tail is reached.
        assert!(counts[5_000..].iter().any(|&c| c > 0));
    }

    #[test]
    fn same_seed_same_sequence_and_single_rank_works() {
        let z = Zipf::new(100, 1.0);
        let a: Vec<usize> = {
            let mut r = StdRng::seed_from_u64(1);
            (0..50).map(|_| z.sample(&mut r)).collect()
        };
        let b: Vec<usize> = {
            let mut r = StdRng::seed_from_u64(1);
            (0..50).map(|_| z.sample(&mut r)).collect()
        };
        assert_eq!(a, b);
        let one = Zipf::new(1, 1.0);
        let mut r = StdRng::seed_from_u64(3);
        assert!((0..100).all(|_| one.sample(&mut r) == 0));
    }
}
