//! Learning-rate schedules, exactly as transformers' `get_{constant,linear,cosine}_schedule_with_warmup`
//! (stepped once per optimizer step by its Trainer: update k, 1-based, uses the factor at k − 1).

use serde::{Deserialize, Serialize};

/// The shape of the learning rate over the run, after the linear warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Warmup, then the full rate (`get_constant_schedule_with_warmup`).
    Constant,
    /// Warmup, then linearly down to 0 at the last step (`get_linear_schedule_with_warmup`).
    #[default]
    Linear,
    /// Warmup, then half a cosine down to 0 (`get_cosine_schedule_with_warmup`, 0.5 cycles).
    Cosine,
}

impl Schedule {
    /// The factor on the base learning rate at scheduler step `current` (0-based) of a run of
    /// `total` steps with `warmup` warmup steps: transformers' lambdas, in f64 as Python computes
    /// them.
    pub fn factor(self, current: usize, warmup: usize, total: usize) -> f64 {
        let (current, warmup, total) = (current as f64, warmup as f64, total as f64);
        if current < warmup {
            return current / warmup.max(1.0);
        }
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (0.0f64).max((total - current) / (total - warmup).max(1.0)),
            Schedule::Cosine => {
                let progress = (current - warmup) / (total - warmup).max(1.0);
                (0.0f64).max(0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos()))
            }
        }
    }

    /// The learning rate update `step` (1-based) uses.
    pub fn lr(self, base: f64, step: usize, warmup: usize, total: usize) -> f64 {
        base * self.factor(step - 1, warmup, total)
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::Constant => "constant",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn schedules_are_transformers_lambdas() {
        // Values of transformers' lambdas (warmup 2, 6 steps), computed by hand from their code.
        let c: Vec<f64> = (1..=6)
            .map(|k| Schedule::Constant.lr(1.0, k, 2, 6))
            .collect();
        assert_eq!(c, [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]);
        let l: Vec<f64> = (1..=6).map(|k| Schedule::Linear.lr(1.0, k, 2, 6)).collect();
        assert_eq!(l, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        let cos: Vec<f64> = (1..=6).map(|k| Schedule::Cosine.lr(1.0, k, 2, 6)).collect();
        let want = [0.0, 0.5, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627];
        for (a, b) in cos.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{cos:?}");
        }
        // No warmup: the first update uses the full rate.
        assert_eq!(Schedule::Linear.lr(2.0, 1, 0, 4), 2.0);
    }
}
