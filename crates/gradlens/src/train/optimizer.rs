//! AdamW as `torch.optim.AdamW` computes it (single-tensor path, `amsgrad=False`), and gradient
//! clipping as `torch.nn.utils.clip_grad_norm_`, on flat tensors of any Burn backend.
//!
//! Written here rather than taken from burn-optim so that every operation is the one PyTorch
//! performs, in the same order (the parity test compares at 1e-9 in f64), and so that weight decay
//! can skip vectors (biases, norm scales) as transformers' Trainer groups its parameters.

use crate::backend::step_kernels::{AdamWScalars, StepKernels};
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

    /// One update of every parameter with its gradient (times `grad_scale`, clipping's
    /// coefficient, when there is one) at learning rate `lr`; `decays[i]` says whether parameter i
    /// takes weight decay. Returns the new values. Each parameter is one pass of
    /// [`StepKernels::adamw`] where the backend fuses it.
    pub fn step(
        &mut self,
        params: Vec<Tensor<B, 1>>,
        grads: Vec<Tensor<B, 1>>,
        decays: &[bool],
        lr: f64,
        grad_scale: Option<f64>,
    ) -> Vec<Tensor<B, 1>>
    where
        B: StepKernels,
    {
        let c = self.config;
        self.steps += 1;
        let t = self.steps as f64;
        // torch: `bias_correction1 = 1 - beta1 ** step` with Python floats.
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2 = 1.0 - c.beta2.powf(t);
        let scalars = |decay: bool| AdamWScalars {
            grad_scale,
            decay: (decay && c.weight_decay != 0.0).then_some(1.0 - lr * c.weight_decay),
            lerp_weight: 1.0 - c.beta1,
            beta2: c.beta2,
            one_minus_beta2: 1.0 - c.beta2,
            bias_correction2_sqrt: bias_correction2.sqrt(),
            eps: c.eps,
            neg_step_size: -(lr / bias_correction1),
        };
        let moments = std::mem::take(&mut self.moments);
        let mut values = Vec::with_capacity(params.len());
        for (((p, g), m), &decay) in params.into_iter().zip(grads).zip(moments).zip(decays) {
            let (p, exp_avg, exp_avg_sq) = B::adamw(p, g, m.exp_avg, m.exp_avg_sq, &scalars(decay));
            self.moments.push(Moments {
                exp_avg,
                exp_avg_sq,
            });
            values.push(p);
        }
        values
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

/// `clip_grad_norm_(max_norm)` given the total norm: the coefficient
/// `max_norm / (norm + 1e-6)` the gradients are multiplied by where it is below 1; `None` (the
/// gradients as they are) otherwise, and with `max_norm` 0.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> Option<f64> {
    if max_norm <= 0.0 {
        return None;
    }
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
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
            param = opt
                .step(vec![param], vec![t(&g)], &[true], lr, None)
                .remove(0);
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
        let out = opt.step(vec![t(&[3.0])], vec![t(&[1.0])], &[false], 0.0, None);
        assert_eq!(v(&out[0]), [3.0]);
        assert_eq!(opt.steps, 1);
        assert!(v(&opt.moments[0].exp_avg)[0] > 0.0);
    }

    #[test]
    fn clipping_is_torchs() {
        let g = vec![t(&[3.0]), t(&[4.0])];
        let n = total_norm(&g);
        assert!((n - 5.0).abs() < 1e-15);
        assert_eq!(clip_coefficient(n, 1.0), Some(1.0 / (5.0 + 1e-6)));
        assert_eq!(clip_coefficient(n, 10.0), None);
        assert_eq!(clip_coefficient(n, 0.0), None);
    }
}
