//! Which samples each step takes: the usable samples in data order (or, with `--shuffle`, a
//! permutation per epoch drawn from the seed), one epoch after the other; step k (1-based) takes
//! the stream's positions `[(k − 1)·B, k·B)`, so a batch that reaches the end of an epoch wraps
//! into the next.

/// The sample stream of a run.
#[derive(Debug, Clone)]
pub struct SampleOrder {
    /// Indices (into the data) of the usable samples, in data order.
    usable: Vec<usize>,
    seed: Option<u64>,
}

impl SampleOrder {
    pub fn new(usable: Vec<usize>, shuffle_seed: Option<u64>) -> Self {
        assert!(!usable.is_empty(), "at least one usable sample");
        Self {
            usable,
            seed: shuffle_seed,
        }
    }

    pub fn usable(&self) -> usize {
        self.usable.len()
    }

    /// The samples of epoch `epoch` (0-based), in the order they are taken.
    pub fn epoch(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.usable.clone();
        if let Some(seed) = self.seed {
            // Fisher–Yates with SplitMix64 seeded from (seed, epoch): the same seed gives the same
            // permutation on every machine and in every gradlens version that keeps this format.
            let mut rng = SplitMix64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in (1..order.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// The samples of step `step` (1-based) with batches of `batch`.
    pub fn batch(&self, step: usize, batch: usize) -> Vec<usize> {
        let n = self.usable.len();
        let first = (step - 1) * batch;
        let mut out = Vec::with_capacity(batch);
        let mut cached: Option<(usize, Vec<usize>)> = None;
        for p in first..first + batch {
            let (e, j) = (p / n, p % n);
            if cached.as_ref().is_none_or(|(ce, _)| *ce != e) {
                cached = Some((e, self.epoch(e as u64)));
            }
            out.push(cached.as_ref().expect("cached").1[j]);
        }
        out
    }

    /// Steps needed for `epochs` passes over the usable samples.
    pub fn steps_for_epochs(&self, epochs: f64, batch: usize) -> usize {
        ((epochs * self.usable.len() as f64) / batch as f64)
            .ceil()
            .max(1.0) as usize
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::SampleOrder;

    #[test]
    fn batches_follow_data_order_and_wrap() {
        let o = SampleOrder::new(vec![0, 2, 3, 5, 6], None);
        assert_eq!(o.batch(1, 2), [0, 2]);
        assert_eq!(o.batch(2, 2), [3, 5]);
        assert_eq!(o.batch(3, 2), [6, 0]);
        assert_eq!(o.batch(4, 2), [2, 3]);
        assert_eq!(o.steps_for_epochs(1.0, 2), 3);
        assert_eq!(o.steps_for_epochs(2.0, 2), 5);
    }

    #[test]
    fn shuffling_is_a_reproducible_permutation_per_epoch() {
        let o = SampleOrder::new((0..20).collect(), Some(7));
        let (e0, e1) = (o.epoch(0), o.epoch(1));
        assert_ne!(e0, (0..20).collect::<Vec<_>>());
        assert_ne!(e0, e1);
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_eq!(SampleOrder::new((0..20).collect(), Some(7)).epoch(0), e0);
        assert_ne!(SampleOrder::new((0..20).collect(), Some(8)).epoch(0), e0);
        assert_eq!(o.batch(6, 4), e1[..4]);
    }
}
