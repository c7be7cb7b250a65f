//! The R factors of the factored path from Gram matrices, where the factors are (`--spectra gram`).
//!
//! The factored path needs, for each factor M `[T, d]` (X or Δ, T ≤ d), an upper triangular R
//! (`T × T`) with RᵀR = M Mᵀ — the R of Mᵀ's thin QR — and then the singular values of the core
//! R_Δ R_Xᵀ ([`crate::spectra::stats::core_singular_values`]). [`crate::spectra::stats`] gets R by
//! Householder QR on the host, after copying M there. Here R
//! comes from **shifted CholeskyQR3** (Fukaya, Kannan, Nakatsukasa, Yamamoto & Yanagisawa, SIAM J.
//! Sci. Comput. 42, 2020), whose O(T²·d) work is matrix products on the backend that holds M
//! (three Gram products `Y Yᵀ` and two products `A · Y` with a `T × T` triangle; on the GPU
//! that is where the factors already are), while the O(T³) work — Cholesky factorisations and
//! triangular inverses of `T × T` matrices — runs on the host in f64; only `T × T` matrices cross.
//!
//! A Gram matrix squares the condition number, so one Cholesky pass would lose the small singular
//! values. The three passes:
//! 1. K₁ = M Mᵀ + s₁ I with s₁ = 11 (dT + T(T+1)) u ‖M‖² (the paper's shift, which makes the
//!    Cholesky succeed for any M: ‖M‖² is bounded by trace K); Y₁ = R₁⁻ᵀ M.
//! 2. the same on Y₁ (now of condition ≲ u^(−1/2)) without a shift, or where that Cholesky fails
//!    (an exactly rank-deficient M: repeated input rows, e.g. a token that occurs twice at layer
//!    0) with s₂ = u·max diag, raised tenfold until it succeeds; Y₂ = R₂⁻ᵀ Y₁, orthonormal rows
//!    to O(u κ²).
//! 3. R₃ from Y₂ Y₂ᵀ (+ s₃ I, the same rule), not applied: R = R₃ A₂⁻ᵀ A₁⁻ᵀ, where A_k is the triangle the
//!    backend actually multiplied by (R_k⁻ᵀ rounded to its dtype), inverted again on the host, so
//!    that M = Rᵀ Y₂ holds for the matrices as computed.
//!
//! RᵀR = M Mᵀ (1 + O(s₃)) + s₁ s₂ s₃ (…) I: the shift of the first pass is cancelled by the
//! later ones up to a product of the shifts. The CPU tests (below, and `gradlens check` with
//! `--spectra gram` on every fixture) hold this path to the dense SVD at 1e-10 of σ_max in f64.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, Tensor, TensorData};
use faer::{Mat, MatRef, Par, Side};

/// A factor whose Gram matrix is not finite, or whose Cholesky factorisation fails at every shift
/// (neither happens with finite input).
#[derive(Debug, thiserror::Error)]
#[error("CholeskyQR of a {rows} x {cols} factor: {what}")]
pub struct GramError {
    rows: usize,
    cols: usize,
    what: &'static str,
}

/// Passes of CholeskyQR.
const PASSES: usize = 3;
/// How many times a pass's shift is raised tenfold before giving up.
const RETRIES: usize = 12;

/// The unit roundoff of the backend's float dtype.
fn unit_roundoff<B: Backend>() -> f64 {
    match <B::FloatElem as Element>::dtype() {
        DType::F64 => f64::EPSILON / 2.0,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        _ => f64::from(f32::EPSILON) / 2.0,
    }
}

/// `t` on the host, in f64.
fn to_host<B: Backend>(t: Tensor<B, 2>) -> Mat<f64> {
    let [rows, cols] = t.dims();
    let v = t
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64 data");
    Mat::from_fn(rows, cols, |i, j| v[i * cols + j])
}

/// `m` on the backend's device, in its float dtype.
fn to_device<B: Backend>(m: MatRef<'_, f64>, device: &B::Device) -> Tensor<B, 2> {
    let (rows, cols) = m.shape();
    let mut v = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            v.push(m[(i, j)]);
        }
    }
    gradlens_models::tensor::float_tensor(TensorData::new(v, [rows, cols]), device)
}

/// Upper triangular R with RᵀR = K + s·I (K symmetric): s = `shift`, and where the Cholesky
/// factorisation fails, `then` raised tenfold until it succeeds.
fn shifted_cholesky(k: &Mat<f64>, mut shift: f64, then: f64) -> Option<Mat<f64>> {
    let n = k.nrows();
    for attempt in 0..=RETRIES {
        if attempt == 1 {
            shift = shift.max(then);
        } else if attempt > 1 {
            shift *= 10.0;
        }
        let shifted = Mat::from_fn(n, n, |i, j| {
            // The lower triangle is what faer reads; symmetrise from both halves.
            let v = 0.5 * (k[(i, j)] + k[(j, i)]);
            if i == j { v + shift } else { v }
        });
        if let Ok(llt) = shifted.llt(Side::Lower) {
            return Some(llt.L().transpose().to_owned());
        }
    }
    None
}

fn inverse_upper(r: &Mat<f64>) -> Mat<f64> {
    let mut inv = Mat::zeros(r.nrows(), r.ncols());
    faer::linalg::triangular_inverse::invert_upper_triangular(inv.as_mut(), r.as_ref(), Par::Seq);
    inv
}

fn inverse_lower(a: &Mat<f64>) -> Mat<f64> {
    let mut inv = Mat::zeros(a.nrows(), a.ncols());
    faer::linalg::triangular_inverse::invert_lower_triangular(inv.as_mut(), a.as_ref(), Par::Seq);
    inv
}

/// The upper triangular `T × T` R with RᵀR = M Mᵀ for a factor M `[T, d]` on any backend (see the
/// module docs). A zero factor gives R = 0.
pub fn gram_r<B: Backend>(m: Tensor<B, 2>) -> Result<Mat<f64>, GramError> {
    let [t, d] = m.dims();
    let fail = |what| GramError {
        rows: t,
        cols: d,
        what,
    };
    let device = m.device();
    let u = unit_roundoff::<B>();
    let mut y = m;
    // A₂⁻ᵀ A₁⁻ᵀ so far (upper triangular).
    let mut acc = Mat::<f64>::identity(t, t);
    for pass in 0..PASSES {
        let k = to_host(y.clone().matmul(y.clone().transpose()));
        let trace: f64 = (0..t).map(|i| k[(i, i)]).sum();
        if !trace.is_finite() {
            return Err(fail("the Gram matrix is not finite"));
        }
        if trace == 0.0 {
            return Ok(Mat::zeros(t, t));
        }
        let max_diag = (0..t).map(|i| k[(i, i)]).fold(0.0, f64::max);
        // The passes that are applied shift by at least √u of the largest diagonal, so that no
        // triangle the backend multiplies by has a condition number above u^(−1/4) (the product
        // is as exact as that condition number allows: an explicit inverse, not a solve); the
        // first also by the paper's shift. The last pass, whose shift would scale the singular
        // values by √(1 + s), shifts only where its factorisation fails (an exactly rank-deficient
        // M: repeated input rows, a position without gradient).
        let floor = u.sqrt() * max_diag;
        let (shift, then) = match pass {
            0 => {
                let s = (11.0 * (d * t + t * (t + 1)) as f64 * u * trace).max(floor);
                (s, s)
            }
            p if p < PASSES - 1 => (floor, floor),
            _ => (0.0, u * max_diag),
        };
        let r = shifted_cholesky(&k, shift, then)
            .ok_or_else(|| fail("Cholesky failed at every shift"))?;
        if pass == PASSES - 1 {
            return Ok(&r * &acc);
        }
        // Y ← A Y with A = R⁻ᵀ as the backend holds it; A⁻ᵀ (≈ R) goes into the product.
        let a_dev = to_device::<B>(inverse_upper(&r).transpose(), &device);
        let a = to_host(a_dev.clone());
        y = a_dev.matmul(y);
        acc = inverse_lower(&a).transpose() * &acc;
    }
    unreachable!("the last pass returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spectra::stats::core_singular_values;
    use crate::spectra::svd::test_rng::lcg;

    type B = burn::backend::NdArray<f64>;

    fn tensor(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Tensor<B, 2> {
        let v: Vec<f64> = (0..rows * cols).map(|i| f(i / cols, i % cols)).collect();
        gradlens_models::tensor::float_tensor(TensorData::new(v, [rows, cols]), &Default::default())
    }

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..rows * cols).map(|_| lcg(&mut s)).collect()
    }

    /// σ(Δᵀ X) both ways; the largest deviation relative to σ_max.
    fn deviation(x: &[f64], delta: &[f64], t: usize, d_in: usize, d_out: usize) -> f64 {
        let xt = tensor(t, d_in, |i, j| x[i * d_in + j]);
        let dt = tensor(t, d_out, |i, j| delta[i * d_out + j]);
        let got =
            core_singular_values(&gram_r(dt).unwrap(), &gram_r(xt).unwrap(), d_out, d_in).unwrap();
        let g = Mat::from_fn(d_out, d_in, |a, b| {
            (0..t)
                .map(|i| delta[i * d_out + a] * x[i * d_in + b])
                .sum::<f64>()
        });
        let want = g.singular_values().expect("faer SVD");
        assert_eq!(got.len(), want.len());
        let smax = want[0].max(f64::MIN_POSITIVE);
        got.iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / smax)
            .fold(0.0, f64::max)
    }

    #[test]
    fn random_factors_of_the_real_shapes() {
        // (tokens, d_in, d_out): the q/o projections of SmolLM2-135M (576), Qwen2-0.5B (896) and Qwen2-1.5B (1536), short samples.
        for (t, d_in, d_out) in [
            (500, 576, 576),
            (549, 896, 896),
            (700, 1536, 1536),
            (40, 64, 64),
            (7, 64, 16),
        ] {
            let dev = deviation(
                &random(t, d_in, 1 + t as u64),
                &random(t, d_out, 2 + t as u64),
                t,
                d_in,
                d_out,
            );
            eprintln!("{t} tokens, {d_in} / {d_out}: largest deviation {dev:.1e} of σ_max");
            assert!(dev < 1e-10, "{t} x {d_in} / {d_out}: {dev:e}");
        }
    }

    #[test]
    fn f32_factors_within_the_f32_tolerance() {
        // The GPU computes in f32: the same algorithm on NdArray<f32> against an f64 dense SVD.
        type B32 = burn::backend::NdArray<f32>;
        let up = |v: &[f64], rows: usize, cols: usize| -> Tensor<B32, 2> {
            gradlens_models::tensor::float_tensor(
                TensorData::new(v.to_vec(), [rows, cols]),
                &Default::default(),
            )
        };
        for (t, d) in [(500, 576), (120, 160)] {
            let (x, delta) = (random(t, d, 21), random(t, d, 22));
            // Rounded to f32 first, so that both sides see the same matrices.
            let (x, delta): (Vec<f64>, Vec<f64>) = (
                x.iter().map(|&v| v as f32 as f64).collect(),
                delta.iter().map(|&v| v as f32 as f64).collect(),
            );
            let got = core_singular_values(
                &gram_r(up(&delta, t, d)).unwrap(),
                &gram_r(up(&x, t, d)).unwrap(),
                d,
                d,
            )
            .unwrap();
            let g = Mat::from_fn(d, d, |a, b| {
                (0..t).map(|i| delta[i * d + a] * x[i * d + b]).sum::<f64>()
            });
            let want = g.singular_values().expect("faer SVD");
            let dev = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / want[0])
                .fold(0.0, f64::max);
            eprintln!("f32, {t} tokens, {d}: largest deviation {dev:.1e} of σ_max");
            assert!(dev < 1e-6, "f32 {t} x {d}: {dev:e}");
        }
    }

    #[test]
    fn repeated_rows_rank_deficiency_and_grading() {
        let (t, d) = (120, 160);
        let base = random(t, d, 7);
        // Every token twice (as at layer 0 when a token recurs): rank T/2.
        let repeated: Vec<f64> = (0..t)
            .flat_map(|i| base[(i / 2) * d..(i / 2 + 1) * d].to_vec())
            .collect();
        // Columns graded over 8 orders of magnitude.
        let graded: Vec<f64> = base
            .iter()
            .enumerate()
            .map(|(i, v)| v * 10f64.powf(-8.0 * (i % d) as f64 / d as f64))
            .collect();
        // Rank one.
        let rank1: Vec<f64> = (0..t * d)
            .map(|i| base[i % d] * (1.0 + (i / d) as f64))
            .collect();
        // A zero row in Δ (a position without loss) and a zero Δ.
        let mut delta = random(t, d, 8);
        delta[..d].iter_mut().for_each(|v| *v = 0.0);
        for (name, x) in [
            ("repeated", &repeated),
            ("graded", &graded),
            ("rank one", &rank1),
        ] {
            let dev = deviation(x, &delta, t, d, d);
            eprintln!("{name}: largest deviation {dev:.1e} of σ_max");
            assert!(dev < 1e-10, "{name}: {dev:e}");
            let dev = deviation(&delta, x, t, d, d);
            eprintln!("{name} as Δ: largest deviation {dev:.1e} of σ_max");
            assert!(dev < 1e-10, "{name} as Δ: {dev:e}");
        }
        let got = core_singular_values(
            &gram_r(tensor(t, d, |_, _| 0.0)).unwrap(),
            &gram_r(tensor(t, d, |i, j| base[i * d + j])).unwrap(),
            d,
            d,
        )
        .unwrap();
        assert!(got.iter().all(|&s| s == 0.0));
    }

    #[test]
    fn r_factors_reproduce_the_gram_matrix() {
        let (t, d) = (60, 90);
        let m = random(t, d, 11);
        let r = gram_r(tensor(t, d, |i, j| m[i * d + j])).unwrap();
        let rtr = r.transpose() * &r;
        let mut worst: f64 = 0.0;
        let mut norm: f64 = 0.0;
        for i in 0..t {
            for j in 0..t {
                let k: f64 = (0..d).map(|c| m[i * d + c] * m[j * d + c]).sum();
                worst = worst.max((rtr[(i, j)] - k).abs());
                norm = norm.max(k.abs());
                if j > i {
                    assert_eq!(r[(j, i)], 0.0, "upper triangular");
                }
            }
        }
        assert!(worst < 1e-12 * norm, "{worst:e} of {norm:e}");
    }
}
