//! AdamW as `torch.optim.AdamW` computes it (single-tensor path, `amsgrad=False`), and gradient
//! clipping as `torch.nn.utils.clip_grad_norm_`, on flat tensors of any Burn backend.
//!
//! Written here rather than taken from burn-optim so that every operation is the one PyTorch
//! performs, in the same order (the parity test compares at 1e-9 in f64), and so that weight decay
//! can skip vectors (biases, norm scales) as transformers' Trainer groups its parameters.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// The hyper-parameters (torch's defaults but the learning rate, which the schedule gives).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
}

/// AdamW's state: the step count and the moments of every trained parameter, in order.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Updates taken so far (torch's `state["step"]`, the same for every parameter).
    pub steps: u64,
    pub moments: Vec<Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    /// Zero moments for parameters of the given lengths.
    pub fn new(config: AdamWConfig, lengths: &[usize], device: &B::Device) -> Self {
        let zeros = |n: usize| gradlens_models::tensor::zeros::<B, 1>([n], device);
        Self {
            config,
            steps: 0,
            moments: lengths
                .iter()
                .map(|&n| Moments {
                    exp_avg: zeros(n),
                    exp_avg_sq: zeros(n),
                })
                .collect(),
        }
    }

    /// One update of every parameter with its gradient at learning rate `lr`; `decays[i]` says
    /// whether parameter i takes weight decay. Returns the new values.
    pub fn step(
        &mut self,
        params: Vec<Tensor<B, 1>>,
        grads: Vec<Tensor<B, 1>>,
        decays: &[bool],
        lr: f64,
    ) -> Vec<Tensor<B, 1>> {
        let c = self.config;
        self.steps += 1;
        let t = self.steps as f64;
        // torch: `bias_correction1 = 1 - beta1 ** step` with Python floats.
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2 = 1.0 - c.beta2.powf(t);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        params
            .into_iter()
            .zip(grads)
            .zip(self.moments.iter_mut())
            .zip(decays)
            .map(|(((p, g), m), &decay)| {
                let p = if decay && c.weight_decay != 0.0 {
                    p.mul_scalar(1.0 - lr * c.weight_decay)
                } else {
                    p
                };
                m.exp_avg = lerp(m.exp_avg.clone(), g.clone(), 1.0 - c.beta1);
                m.exp_avg_sq = m
                    .exp_avg_sq
                    .clone()
                    .mul_scalar(c.beta2)
                    .add(g.clone().mul(g).mul_scalar(1.0 - c.beta2));
                let denom = m
                    .exp_avg_sq
                    .clone()
                    .sqrt()
                    .div_scalar(bias_correction2_sqrt)
                    .add_scalar(c.eps);
                p.add(m.exp_avg.clone().div(denom).mul_scalar(-step_size))
            })
            .collect()
    }
}

/// `torch.lerp(start, end, weight)` as ATen computes it: `start + w·(end − start)` for w < 0.5,
/// `end − (end − start)·(1 − w)` otherwise.
fn lerp<B: Backend>(start: Tensor<B, 1>, end: Tensor<B, 1>, weight: f64) -> Tensor<B, 1> {
    let diff = end.clone().sub(start.clone());
    if weight.abs() < 0.5 {
        start.add(diff.mul_scalar(weight))
    } else {
        end.sub(diff.mul_scalar(1.0 - weight))
    }
}

/// The L2 norm of all gradients together (read back to the host).
pub fn total_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> f64 {
    if grads.is_empty() {
        return 0.0;
    }
    // torch: the norm of the per-parameter norms.
    let norms: Vec<Tensor<B, 1>> = grads
        .iter()
        .map(|g| g.clone().powi_scalar(2).sum().sqrt())
        .collect();
    let squares = Tensor::cat(norms, 0).powi_scalar(2).sum().sqrt();
    squares
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64")[0]
}

/// `clip_grad_norm_(max_norm)` given the total norm: the gradients scaled by
/// `min(1, max_norm / (norm + 1e-6))`; `max_norm` 0 leaves them as they are.
pub fn clip<B: Backend>(grads: Vec<Tensor<B, 1>>, norm: f64, max_norm: f64) -> Vec<Tensor<B, 1>> {
    if max_norm <= 0.0 {
        return grads;
    }
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 {
        return grads;
    }
    grads.into_iter().map(|g| g.mul_scalar(coef)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::NdArray<f64>;

    fn t(v: &[f64]) -> Tensor<B, 1> {
        gradlens_models::tensor::float_tensor::<B, 1>(
            burn::tensor::TensorData::new(v.to_vec(), [v.len()]),
            &Default::default(),
        )
    }
    fn v(t: &Tensor<B, 1>) -> Vec<f64> {
        t.clone().into_data().to_vec::<f64>().unwrap()
    }

    /// Two updates of one parameter, against AdamW's formulas written out by hand.
    #[test]
    fn adamw_matches_its_formulas() {
        let config = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::<B>::new(config, &[2], &Default::default());
        let (mut p, mut m, mut s) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        let mut param = t(&p);
        for (k, (g, lr)) in [([0.5, -0.25], 0.01), ([0.1, 0.3], 0.02)]
            .into_iter()
            .enumerate()
        {
            param = opt.step(vec![param], vec![t(&g)], &[true], lr).remove(0);
            let step = (k + 1) as f64;
            for i in 0..2 {
                p[i] *= 1.0 - lr * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                s[i] = 0.999 * s[i] + 0.001 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powf(step));
                let sh = s[i] / (1.0 - 0.999f64.powf(step));
                p[i] -= lr * mh / (sh.sqrt() + 1e-8);
            }
            for (a, b) in v(&param).iter().zip(p) {
                assert!((a - b).abs() <= 1e-14 * b.abs(), "{a} {b}");
            }
        }
        // No decay: the parameter's own scale is untouched when lr is 0 (a warmup's first step).
        let mut opt = AdamW::<B>::new(config, &[1], &Default::default());
        let out = opt.step(vec![t(&[3.0])], vec![t(&[1.0])], &[false], 0.0);
        assert_eq!(v(&out[0]), [3.0]);
        assert_eq!(opt.steps, 1);
        assert!(v(&opt.moments[0].exp_avg)[0] > 0.0);
    }

    #[test]
    fn clipping_is_torchs() {
        let g = vec![t(&[3.0]), t(&[4.0])];
        let n = total_norm(&g);
        assert!((n - 5.0).abs() < 1e-15);
        let c = clip(g.clone(), n, 1.0);
        let coef = 1.0 / (5.0 + 1e-6);
        assert_eq!(v(&c[0]), [3.0 * coef]);
        let unclipped = clip(g.clone(), n, 10.0);
        assert_eq!(v(&unclipped[1]), [4.0]);
        assert_eq!(v(&clip(g, n, 0.0)[0]), [3.0]);
    }
}
