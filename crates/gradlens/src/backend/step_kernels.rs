//! The element-wise work of a training step on each backend: a sample's share added to the batch
//! gradient, and one AdamW update of one parameter.
//!
//! By default each is a few tensor operations, as `torch.optim.AdamW`'s single-tensor path
//! performs them (one kernel each; burn-cuda fuses them). On Burn's NdArray backend each is one
//! pass over the parameter, in parallel, the moments and the batch gradient updated in place:
//! AdamW as tensor operations is about a dozen passes over every trained parameter and a new
//! buffer for most of them, each step. Both compute every element with the same operations in the
//! same order (Rust contracts nothing into a fused multiply-add), so they give the same bits
//! (`fused_kernels_match_the_tensor_operations`).

use burn::backend::ndarray::NdArrayTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{Element, Tensor, TensorPrimitive};
use ndarray::{ArcArray, IxDyn};
use rayon::prelude::*;

/// The numbers of one AdamW update of one parameter, each used as torch's single-tensor path
/// uses it (see [`StepKernels::adamw`]).
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    /// Clipping's coefficient, applied to the gradient first.
    pub grad_scale: Option<f64>,
    /// `1 − lr · weight_decay` where the parameter decays.
    pub decay: Option<f64>,
    /// `1 − β₁`, the weight of `torch.lerp(exp_avg, grad, ·)`.
    pub lerp_weight: f64,
    pub beta2: f64,
    pub one_minus_beta2: f64,
    pub bias_correction2_sqrt: f64,
    pub eps: f64,
    /// `−lr / (1 − β₁ᵗ)`.
    pub neg_step_size: f64,
}

/// The element-wise work of a training step on a backend: as separate tensor operations by
/// default (one kernel each; burn-cuda fuses them), as one pass over each parameter on Burn's
/// NdArray backend (below). Both compute every element with the same operations in the same
/// order, so they give the same bits.
pub trait StepKernels: Backend {
    /// `acc + w · g`, or `w · g` without `acc`: one sample's share of the batch gradient.
    fn accumulate(acc: Option<Tensor<Self, 1>>, g: Tensor<Self, 1>, w: f64) -> Tensor<Self, 1> {
        accumulate_ops(acc, g, w)
    }

    /// One AdamW update of parameter `p` with gradient `g` and moments `m`, `v`
    /// (`torch.optim.AdamW`, single-tensor path): the new value and moments.
    fn adamw(
        p: Tensor<Self, 1>,
        g: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        k: &AdamWScalars,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>) {
        adamw_ops(p, g, m, v, k)
    }
}

/// [`StepKernels::accumulate`] as tensor operations.
pub fn accumulate_ops<B: Backend>(
    acc: Option<Tensor<B, 1>>,
    g: Tensor<B, 1>,
    w: f64,
) -> Tensor<B, 1> {
    let g = g.mul_scalar(w);
    match acc {
        Some(a) => a.add(g),
        None => g,
    }
}

/// [`StepKernels::adamw`] as tensor operations, in torch's order.
pub fn adamw_ops<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    k: &AdamWScalars,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let g = match k.grad_scale {
        Some(c) => g.mul_scalar(c),
        None => g,
    };
    let p = match k.decay {
        Some(d) => p.mul_scalar(d),
        None => p,
    };
    let m = lerp(m, g.clone(), k.lerp_weight);
    let v = v
        .mul_scalar(k.beta2)
        .add(g.clone().mul(g).mul_scalar(k.one_minus_beta2));
    let denom = v
        .clone()
        .sqrt()
        .div_scalar(k.bias_correction2_sqrt)
        .add_scalar(k.eps);
    let p = p.add(m.clone().div(denom).mul_scalar(k.neg_step_size));
    (p, m, v)
}

impl StepKernels for burn::backend::Flex {}
#[cfg(feature = "tch")]
impl StepKernels for burn::backend::LibTorch<f32> {}
#[cfg(feature = "tch")]
impl StepKernels for burn::backend::LibTorch<f64> {}
#[cfg(feature = "cuda")]
impl StepKernels for burn::backend::Cuda<f32, i32> {}

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

/// Elements per task of the one-pass kernels.
const CHUNK: usize = 1 << 14;

/// NdArray: one pass per call, on the rayon pool. A tensor in another float dtype than the
/// backend's (none that gradlens makes) takes the tensor operations.
macro_rules! host_step_kernels {
    ($e:ty, $variant:ident) => {
        impl StepKernels for burn::backend::NdArray<$e> {
            fn accumulate(
                acc: Option<Tensor<Self, 1>>,
                g: Tensor<Self, 1>,
                w: f64,
            ) -> Tensor<Self, 1> {
                let own = <$e as Element>::dtype();
                if g.dtype() != own || acc.as_ref().is_some_and(|a| a.dtype() != own) {
                    return accumulate_ops(acc, g, w);
                }
                let w = w as $e;
                let g = host_array!($variant, g);
                let gs = g.as_slice().expect("standard layout");
                let out = match acc {
                    Some(acc) => {
                        let mut a = host_array!($variant, acc);
                        // Unique: updated in place (a shared one is copied first).
                        let s = a.as_slice_mut().expect("standard layout");
                        s.par_iter_mut()
                            .zip(gs.par_iter())
                            .with_min_len(CHUNK)
                            .for_each(|(a, &g)| *a += g * w);
                        a
                    }
                    None => {
                        let v: Vec<$e> = gs.par_iter().with_min_len(CHUNK).map(|&g| g * w).collect();
                        ArcArray::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-d")
                    }
                };
                Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(out)))
            }

            fn adamw(
                p: Tensor<Self, 1>,
                g: Tensor<Self, 1>,
                m: Tensor<Self, 1>,
                v: Tensor<Self, 1>,
                k: &AdamWScalars,
            ) -> (Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>) {
                let own = <$e as Element>::dtype();
                if [&p, &g, &m, &v].iter().any(|t| t.dtype() != own) {
                    return adamw_ops(p, g, m, v, k);
                }
                let (p, g) = (host_array!($variant, p), host_array!($variant, g));
                let (mut m, mut v) = (host_array!($variant, m), host_array!($variant, v));
                let e = |x: f64| x as $e;
                let grad_scale = k.grad_scale.map(e);
                let decay = k.decay.map(e);
                let small = k.lerp_weight.abs() < 0.5;
                let (w, w1) = (e(k.lerp_weight), e(1.0 - k.lerp_weight));
                let (beta2, omb2) = (e(k.beta2), e(k.one_minus_beta2));
                let (bc2, eps, nss) = (e(k.bias_correction2_sqrt), e(k.eps), e(k.neg_step_size));
                let ps = p.as_slice().expect("standard layout");
                let gs = g.as_slice().expect("standard layout");
                let ms = m.as_slice_mut().expect("standard layout");
                let vs = v.as_slice_mut().expect("standard layout");
                let out: Vec<$e> = ps
                    .par_iter()
                    .zip(gs.par_iter())
                    .zip(ms.par_iter_mut())
                    .zip(vs.par_iter_mut())
                    .with_min_len(CHUNK)
                    .map(|(((&p, &g), m), v)| {
                        let g = match grad_scale {
                            Some(c) => g * c,
                            None => g,
                        };
                        let p = match decay {
                            Some(d) => p * d,
                            None => p,
                        };
                        let diff = g - *m;
                        *m = if small { *m + diff * w } else { g - diff * w1 };
                        *v = *v * beta2 + (g * g) * omb2;
                        let denom = v.sqrt() / bc2 + eps;
                        p + (*m / denom) * nss
                    })
                    .collect();
                let wrap = |a: ArcArray<$e, IxDyn>| {
                    Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(a)))
                };
                let out = ArcArray::from_shape_vec(IxDyn(&[out.len()]), out).expect("1-d");
                (wrap(out), wrap(m), wrap(v))
            }
        }
    };
}

/// The array of an NdArray float tensor of variant `$variant`, in standard layout.
macro_rules! host_array {
    ($variant:ident, $t:expr) => {
        match $t.into_primitive().tensor() {
            NdArrayTensor::$variant(s) => {
                let a = s.into_shared();
                if a.is_standard_layout() {
                    a
                } else {
                    a.as_standard_layout().into_owned().into_shared()
                }
            }
            _ => unreachable!("the dtype was checked"),
        }
    };
}

host_step_kernels!(f32, F32);
host_step_kernels!(f64, F64);

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU's one-pass kernels give the bits of the separate tensor operations (as every
    /// other backend runs them), in f32 and f64, with and without clipping and decay, on both
    /// sides of `lerp`'s branch, in place and not.
    #[test]
    fn fused_kernels_match_the_tensor_operations() {
        fn check<B: StepKernels>() {
            let device = Default::default();
            let n = 70_001; // several chunks of the host kernels, and a ragged end
            let vals = |seed: u64, scale: f64| -> Tensor<B, 1> {
                let v: Vec<f64> = (0..n as u64)
                    .map(|i| {
                        let x = ((i + 1) * (seed * 2_654_435_761 + 97)) % 10_007;
                        scale * (x as f64 / 10_007.0 - 0.37)
                    })
                    .collect();
                gradlens_models::tensor::float_tensor::<B, 1>(
                    burn::tensor::TensorData::new(v, [n]),
                    &device,
                )
            };
            let bits = |t: &Tensor<B, 1>| -> Vec<u64> {
                t.clone()
                    .into_data()
                    .convert::<f64>()
                    .to_vec::<f64>()
                    .unwrap()
                    .into_iter()
                    .map(f64::to_bits)
                    .collect()
            };
            for (grad_scale, decay, lerp_weight) in [
                (None, None, 0.1),
                (Some(0.37), Some(0.999), 0.1),
                (Some(0.5), None, 0.75),
            ] {
                let k = AdamWScalars {
                    grad_scale,
                    decay,
                    lerp_weight,
                    beta2: 0.999,
                    one_minus_beta2: 1.0 - 0.999,
                    bias_correction2_sqrt: (1.0f64 - 0.999f64.powf(3.0)).sqrt(),
                    eps: 1e-8,
                    neg_step_size: -(1e-3 / (1.0 - 0.9f64.powf(3.0))),
                };
                let (p, g) = (vals(1, 1.0), vals(2, 1e-2));
                let (m, v) = (vals(3, 1e-3), vals(4, 1e-5).abs());
                let want = adamw_ops(p.clone(), g.clone(), m.clone(), v.clone(), &k);
                // The moments shared (copied before the update) and owned (updated in place).
                let shared = B::adamw(p.clone(), g.clone(), m.clone(), v.clone(), &k);
                let owned = B::adamw(p, g, m, v, &k);
                for got in [shared, owned] {
                    assert!(bits(&got.0) == bits(&want.0), "parameter");
                    assert!(bits(&got.1) == bits(&want.1), "exp_avg");
                    assert!(bits(&got.2) == bits(&want.2), "exp_avg_sq");
                }
            }
            let (a, g) = (vals(5, 1.0), vals(6, 1e-2));
            let want = accumulate_ops(Some(a.clone()), g.clone(), 0.3);
            assert!(bits(&B::accumulate(Some(a.clone()), g.clone(), 0.3)) == bits(&want));
            assert!(bits(&B::accumulate(Some(a), g.clone(), 0.3)) == bits(&want));
            let first = accumulate_ops(None, g.clone(), 0.3);
            assert!(bits(&B::accumulate(None, g, 0.3)) == bits(&first));
        }
        check::<burn::backend::NdArray<f32>>();
        check::<burn::backend::NdArray<f64>>();
    }
}
