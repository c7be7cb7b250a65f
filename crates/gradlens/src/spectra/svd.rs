//! Singular values of a dense matrix: faer's Householder bidiagonalisation, then the singular
//! values of the bidiagonal by the dqds algorithm (differential quotient-difference with shifts;
//! Fernando & Parlett, Numer. Math. 67, 1994; Parlett & Marques, Linear Algebra Appl. 309, 2000),
//! run in f64 whatever the matrix's dtype.
//!
//! Why not faer's own `singular_values`: for the values alone it runs a divide-and-conquer on the
//! bidiagonal in the matrix's dtype. On a 549² core in f32 that was a third of the SVD's time, and
//! its values deviated from an f64 SVD of the same f32 matrix by 2.7e-6 of σ_max, where the
//! bidiagonalisation alone accounts for 8e-8 (measured; see docs/performance.md). dqds in f64 on
//! the same bidiagonal keeps the latter and takes less than half the time.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, MatRef, Par};

/// A float type the host-side linear algebra runs in: the model's compute dtype (f32 on CUDA and
/// for `--dtype f32`, f64 for the reference path).
pub trait Real:
    faer::traits::RealField + Copy + Send + Sync + Into<f64> + std::fmt::Debug + 'static
{
    /// The rounding unit (machine epsilon) as f64.
    const EPSILON: f64;
    /// Reduce `b` (rows ≥ cols) to upper bidiagonal form in place; its diagonal and
    /// superdiagonal in f64 (see [`crate::spectra::svd`]).
    fn bidiagonalise(b: &mut faer::Mat<Self>) -> (Vec<f64>, Vec<f64>) {
        bidiagonalise_one_stage(b)
    }
}
impl Real for f32 {
    const EPSILON: f64 = f32::EPSILON as f64;
    /// From [`TWO_STAGE_FROM`] columns on, the two-stage reduction
    /// ([`crate::spectra::two_stage`]).
    fn bidiagonalise(b: &mut faer::Mat<f32>) -> (Vec<f64>, Vec<f64>) {
        if b.ncols() >= TWO_STAGE_FROM {
            crate::spectra::two_stage::bidiagonalise(b, crate::spectra::two_stage::BAND)
        } else {
            bidiagonalise_one_stage(b)
        }
    }
}
impl Real for f64 {
    const EPSILON: f64 = f64::EPSILON;
}

#[derive(Debug, thiserror::Error)]
#[error("singular value decomposition did not converge ({0})")]
pub struct SvdError(pub(crate) String);

/// faer's own rule: a matrix with more than 11/6 as many rows as columns is reduced by a thin QR
/// first and its square R bidiagonalised.
const QR_RATIO: f64 = 11.0 / 6.0;

/// Singular values of `a`, largest first (min(rows, cols) of them).
pub fn singular_values_of<T: Real>(a: MatRef<'_, T>) -> Result<Vec<f64>, SvdError> {
    let a = if a.nrows() >= a.ncols() {
        a
    } else {
        a.transpose()
    };
    singular_values_in_place(a.to_owned())
}

/// Singular values of `b`, largest first; `b` is consumed (bidiagonalised in place, no copy).
pub fn singular_values_in_place<T: Real>(b: Mat<T>) -> Result<Vec<f64>, SvdError> {
    let mut b = if b.nrows() >= b.ncols() {
        b
    } else {
        b.transpose().to_owned()
    };
    let (m, n) = b.shape();
    if n == 0 {
        return Ok(Vec::new());
    }
    if m as f64 / n as f64 > QR_RATIO {
        b = thin_r(b);
    }
    let (d, e) = T::bidiagonalise(&mut b);
    match bidiagonal_singular_values(&d, &e, tolerance::<T>()) {
        Some(s) => Ok(s),
        // dqds did not converge in its sweep budget (not seen in practice), or an entry is not
        // finite: faer's SVD of the bidiagonal (the same singular values), which has its own
        // algorithm and reports non-finite input as an error.
        None => {
            tracing::debug!("dqds did not converge on a {m}×{n} matrix; using faer's SVD");
            bidiagonal_matrix(&d, &e)
                .singular_values()
                .map_err(|e| SvdError(format!("{e:?}")))
        }
    }
}

/// The upper bidiagonal matrix with diagonal `d` and superdiagonal `e`, dense.
fn bidiagonal_matrix(d: &[f64], e: &[f64]) -> Mat<f64> {
    Mat::from_fn(d.len(), d.len(), |i, j| {
        if i == j {
            d[i]
        } else if j == i + 1 {
            e[i]
        } else {
            0.0
        }
    })
}

/// Columns per block of the thin QR ([`thin_r`]): faer's own choice for the factors measured
/// here (896 × 549) is 48 with each block's panel split again; 32 with unsplit panels measured
/// 7–10% faster on one thread (f32, 896 × 549 and 896 × 784, alternated; docs/performance.md).
const QR_BLOCK: usize = 32;

/// R of the thin QR of `a` (m × n): `[min(m, n), n]`, upper triangular (trapezoidal when
/// m < n). Householder QR in place (faer, one thread); Q is not formed.
pub fn thin_r<T: Real>(mut a: Mat<T>) -> Mat<T> {
    let (m, n) = a.shape();
    let k = m.min(n);
    if k == 0 {
        return Mat::zeros(k, n);
    }
    let mut h = Mat::<T>::zeros(QR_BLOCK.min(k), k);
    householder_qr_in_place(a.as_mut(), h.as_mut());
    Mat::from_fn(k, n, |i, j| if j >= i { a[(i, j)] } else { T::zero() })
}

pub use crate::spectra::householder::householder_qr_in_place;

/// The relative accuracy asked of each singular value of the bidiagonal: the matrix dtype's
/// rounding unit (the bidiagonalisation in that dtype is no more accurate), and no tighter than
/// LAPACK's 100 ε in f64.
fn tolerance<T: Real>() -> f64 {
    T::EPSILON.max(100.0 * f64::EPSILON)
}

/// From this many columns on, f32 matrices are bidiagonalised in two stages
/// ([`crate::spectra::two_stage`]): measured 0.89× the one-stage time at 640, no gain at 549.
pub const TWO_STAGE_FROM: usize = 640;

/// Householder bidiagonalisation in place (faer, one thread): `b` becomes `U B Vᵀ` with B upper
/// bidiagonal; returns B's diagonal and superdiagonal in f64.
pub fn bidiagonalise_one_stage<T: Real>(b: &mut Mat<T>) -> (Vec<f64>, Vec<f64>) {
    use faer::linalg::svd::bidiag;
    let (m, n) = b.shape();
    let bs = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<T>(m, n);
    let mut h_left = Mat::<T>::zeros(bs, n);
    let mut h_right = Mat::<T>::zeros(bs, n.saturating_sub(1));
    let mut mem = MemBuffer::new(bidiag::bidiag_in_place_scratch::<T>(
        m,
        n,
        Par::Seq,
        Default::default(),
    ));
    bidiag::bidiag_in_place(
        b.as_mut(),
        h_left.as_mut(),
        h_right.as_mut(),
        Par::Seq,
        MemStack::new(&mut mem),
        Default::default(),
    );
    let d = (0..n).map(|i| b[(i, i)].into()).collect();
    let e = (0..n.saturating_sub(1))
        .map(|i| b[(i, i + 1)].into())
        .collect();
    (d, e)
}

/// Singular values, largest first, of the upper bidiagonal matrix with diagonal `d` (n values)
/// and superdiagonal `e` (n − 1 values), each to relative accuracy about `tol` (dqds). `None`
/// when an entry is not finite or the iteration exceeds its budget (30 sweeps per value).
///
/// dqds works on the squares q_i = d_i², e_i = e_i² (the Cholesky-like factors of BᵀB) and keeps
/// them positive; every transform with shift τ lowers all eigenvalues of BᵀB by τ, so the
/// accumulated shift plus the last q of an unreduced block converges to its smallest eigenvalue,
/// which is then deflated. Singular values of the scaled matrix below about 1e-154 (whose squares
/// underflow) come out as zero.
pub fn bidiagonal_singular_values(d: &[f64], e: &[f64], tol: f64) -> Option<Vec<f64>> {
    let n = d.len();
    assert_eq!(e.len(), n.saturating_sub(1), "superdiagonal length");
    if n == 0 {
        return Some(Vec::new());
    }
    if !d.iter().chain(e).all(|x| x.is_finite()) {
        return None;
    }
    let scale = d.iter().chain(e).fold(0.0f64, |m, x| m.max(x.abs()));
    if scale == 0.0 {
        return Some(vec![0.0; n]);
    }
    let sq = |x: &f64| (x / scale) * (x / scale);
    let mut q: Vec<f64> = d.iter().map(sq).collect();
    let mut ee: Vec<f64> = e.iter().map(sq).collect();
    ee.push(0.0);
    let mut new_q = vec![0.0; n];
    let mut new_e = vec![0.0; n];
    let mut eig = Vec::with_capacity(n);
    let tol2 = tol * tol;
    // Unreduced blocks [lo, hi] with their accumulated shift; split where e_i = 0.
    let mut blocks: Vec<(usize, usize, f64)> = Vec::new();
    let mut start = 0;
    for (i, &x) in ee.iter().enumerate() {
        if x == 0.0 {
            blocks.push((start, i, 0.0));
            start = i + 1;
        }
    }
    let mut budget = 30 * n + 100;
    while let Some((lo, mut hi, mut sigma)) = blocks.pop() {
        // The smallest pivot of the last transform (an upper bound on the smallest eigenvalue
        // of the shifted matrix); NaN before the first.
        let mut dmin = f64::NAN;
        let mut failures = 0;
        'block: loop {
            // Deflate converged values at the bottom.
            loop {
                if hi == lo {
                    eig.push(sigma + q[lo]);
                    break 'block;
                }
                if hi == lo + 1 {
                    let (a, b) = eigenvalues_2x2(q[lo], ee[lo], q[hi]);
                    eig.push(sigma + a);
                    eig.push(sigma + b);
                    break 'block;
                }
                // Dropping e_{n-1} moves the last eigenvalue by about e_{n-1} (the diagonal) and
                // at most sqrt(q_{n-1} e_{n-1}) (the coupling).
                let lambda = sigma + q[hi];
                if ee[hi - 1] <= tol2 * lambda || ee[hi - 1] <= tol2 * q[hi - 1] {
                    eig.push(lambda);
                    hi -= 1;
                    dmin = f64::INFINITY;
                } else {
                    break;
                }
            }
            // Split where an off-diagonal is negligible against its neighbours; the upper part
            // waits with the same shift.
            for i in (lo..hi).rev() {
                if ee[i] <= tol2 * (sigma + q[i].min(q[i + 1])) {
                    blocks.push((lo, i, sigma));
                    blocks.push((i + 1, hi, sigma));
                    break 'block;
                }
            }
            let tau = shift(&q, &ee, lo, hi, dmin, failures);
            budget = budget.checked_sub(1)?;
            // The dqds transform into the scratch arrays; it fails (the shift passed the
            // smallest eigenvalue) when a pivot turns negative.
            let mut p = q[lo] - tau;
            let mut pmin = p;
            let mut ok = p >= 0.0;
            if ok {
                for i in lo..hi {
                    let qh = p + ee[i];
                    let t = q[i + 1] / qh;
                    new_q[i] = qh;
                    new_e[i] = ee[i] * t;
                    p = p * t - tau;
                    if p.is_nan() || p < 0.0 {
                        ok = false;
                        break;
                    }
                    pmin = pmin.min(p);
                }
            }
            if !ok || !p.is_finite() {
                if tau == 0.0 {
                    return None;
                }
                failures += 1;
                continue;
            }
            new_q[hi] = p;
            q[lo..=hi].copy_from_slice(&new_q[lo..=hi]);
            ee[lo..hi].copy_from_slice(&new_e[lo..hi]);
            sigma += tau;
            dmin = pmin;
            failures = 0;
        }
    }
    let mut s: Vec<f64> = eig.into_iter().map(|x| x.max(0.0).sqrt() * scale).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    Some(s)
}

/// The eigenvalues (larger, smaller) of the 2 × 2 block with qd entries q1, e1, q2: trace
/// q1 + e1 + q2, determinant q1 q2; the discriminant is a sum of squares, so neither root cancels.
fn eigenvalues_2x2(q1: f64, e1: f64, q2: f64) -> (f64, f64) {
    let g = q1 - q2 + e1;
    let disc = (g * g + 4.0 * e1 * q2).sqrt();
    let big = 0.5 * (q1 + e1 + q2 + disc);
    let small = if big > 0.0 { q1 * q2 / big } else { 0.0 };
    (big, small)
}

/// The shift of the next transform of block [lo, hi] (hi ≥ lo + 2). It must stay below the
/// smallest eigenvalue of the shifted matrix, else the transform fails and is retried with a
/// smaller one. The smaller eigenvalue `est` of the trailing 2 × 2 of the symmetric tridiagonal
/// (diagonal q_i + e_{i-1}, off-diagonal² q_i e_i) bounds it from above (interlacing), as does
/// the smallest pivot of the last transform; the coupling to row hi − 2 lowers it by about
/// b² v² / (a − est) (second-order perturbation), taken twice as a margin. Near convergence the
/// shift is thus within O(e²) of the eigenvalue and e_{hi-1} falls quadratically. Retries take
/// half and an eighth of `est`, then no shift (which cannot fail on a positive array).
fn shift(q: &[f64], ee: &[f64], lo: usize, hi: usize, dmin: f64, failures: u32) -> f64 {
    if dmin.is_nan() || dmin <= 0.0 || failures >= 3 {
        return 0.0;
    }
    let a2 = q[hi - 1] + ee[hi - 2];
    let b2sq = q[hi - 1] * ee[hi - 1];
    let a3 = q[hi] + ee[hi - 1];
    let diff = a2 - a3;
    let disc = (diff * diff + 4.0 * b2sq).sqrt();
    let est = if diff >= 0.0 {
        a3 - 2.0 * b2sq / (disc + diff)
    } else {
        a2 - 2.0 * b2sq / (disc - diff)
    }
    .min(dmin);
    let a1 = q[hi - 2] + if hi - 2 > lo { ee[hi - 3] } else { 0.0 };
    let b1sq = q[hi - 2] * ee[hi - 2];
    let g = a2 - est;
    let v1sq = b2sq / (g * g + b2sq);
    let corr = if a1 > est {
        b1sq * v1sq / (a1 - est)
    } else {
        f64::INFINITY
    };
    let tau = match failures {
        0 if 2.0 * corr < 0.5 * est => (est - 2.0 * corr) * (1.0 - 8.0 * f64::EPSILON),
        0 | 1 => 0.5 * est,
        _ => 0.125 * est,
    };
    if tau.is_finite() { tau.max(0.0) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::test_rng::lcg;
    use super::*;

    /// faer's SVD (f64) of the dense bidiagonal: the reference.
    fn reference(d: &[f64], e: &[f64]) -> Vec<f64> {
        bidiagonal_matrix(d, e).singular_values().unwrap()
    }

    fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: count");
        let smax = want.first().copied().unwrap_or(0.0);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= rel * smax,
                "{what}: σ_{i} = {g:e}, reference {w:e} (σ_max {smax:e})"
            );
        }
    }

    #[test]
    fn matches_a_dense_svd_on_random_bidiagonals() {
        let mut seed = 7;
        for n in [1, 2, 3, 4, 5, 8, 17, 64, 200] {
            let d: Vec<f64> = (0..n).map(|_| lcg(&mut seed)).collect();
            let e: Vec<f64> = (0..n - 1).map(|_| lcg(&mut seed)).collect();
            let got = bidiagonal_singular_values(&d, &e, 100.0 * f64::EPSILON).unwrap();
            assert_close(&got, &reference(&d, &e), 1e-13, &format!("n={n}"));
        }
    }

    #[test]
    fn graded_and_clustered_spectra() {
        // Graded over 40 orders of magnitude: each value to high relative accuracy, which a
        // diagonal matrix (e = 0 but for one tiny coupling) shows exactly.
        let n = 30;
        let d: Vec<f64> = (0..n).map(|i| 10f64.powi(-(i as i32) * 4 / 3)).collect();
        let mut e = vec![0.0; n - 1];
        e[10] = 1e-300;
        let got = bidiagonal_singular_values(&d, &e, 100.0 * f64::EPSILON).unwrap();
        for (g, w) in got.iter().zip(&d) {
            assert!((g - w).abs() <= 1e-14 * w, "{g:e} vs {w:e}");
        }
        // All ones (singular values 2 cos(kπ/(2n+1)), clustered near 2).
        let n = 100;
        let got = bidiagonal_singular_values(&vec![1.0; n], &vec![1.0; n - 1], 1e-14).unwrap();
        let mut want: Vec<f64> = (1..=n)
            .map(|k| 2.0 * (k as f64 * std::f64::consts::PI / (2.0 * n as f64 + 1.0)).cos())
            .collect();
        want.sort_by(|a, b| b.total_cmp(a));
        assert_close(&got, &want, 1e-13, "ones");
        // Widely scaled entries: scaling is undone exactly.
        let d = [3e200, 1e200, 2e199];
        let e = [1e200, 5e199];
        let got = bidiagonal_singular_values(&d, &e, 1e-14).unwrap();
        let want: Vec<f64> = reference(&[3.0, 1.0, 0.2], &[1.0, 0.5])
            .into_iter()
            .map(|x| x * 1e200)
            .collect();
        assert_close(&got, &want, 1e-13, "scaled");
    }

    #[test]
    fn zeros_and_singular_matrices() {
        assert_eq!(bidiagonal_singular_values(&[], &[], 1e-14), Some(vec![]));
        assert_eq!(
            bidiagonal_singular_values(&[0.0, 0.0], &[0.0], 1e-14),
            Some(vec![0.0, 0.0])
        );
        assert_eq!(
            bidiagonal_singular_values(&[-2.0], &[], 1e-14),
            Some(vec![2.0])
        );
        // Zeros on the diagonal (rank-deficient): the zero values must come out as zeros.
        let mut seed = 3;
        for zero_at in [0, 5, 9] {
            let mut d: Vec<f64> = (0..10).map(|_| lcg(&mut seed)).collect();
            let e: Vec<f64> = (0..9).map(|_| lcg(&mut seed)).collect();
            d[zero_at] = 0.0;
            let got = bidiagonal_singular_values(&d, &e, 100.0 * f64::EPSILON).unwrap();
            assert_close(
                &got,
                &reference(&d, &e),
                1e-13,
                &format!("zero at {zero_at}"),
            );
            assert!(got[9] <= 1e-15, "smallest {:e}", got[9]);
        }
        assert_eq!(
            bidiagonal_singular_values(&[1.0, f64::NAN], &[1.0], 1e-14),
            None
        );
        assert_eq!(
            bidiagonal_singular_values(&[1.0, 1.0], &[f64::INFINITY], 1e-14),
            None
        );
    }

    #[test]
    fn dense_matrices_of_every_shape_and_dtype() {
        let mut seed = 11;
        for (m, n) in [
            (1, 1),
            (5, 3),
            (3, 5),
            (40, 40),
            (60, 20),
            (20, 60),
            (300, 120),
        ] {
            let a = Mat::<f64>::from_fn(m, n, |_, _| lcg(&mut seed));
            let want = a.singular_values().unwrap();
            let got = singular_values_of(a.as_ref()).unwrap();
            assert_close(&got, &want, 1e-13, &format!("f64 {m}×{n}"));
            // f32: against the f64 SVD of the same (rounded) matrix, at f32's accuracy.
            let a32 = Mat::<f32>::from_fn(m, n, |i, j| a[(i, j)] as f32);
            let a32_64 = Mat::<f64>::from_fn(m, n, |i, j| a32[(i, j)] as f64);
            let got = singular_values_of(a32.as_ref()).unwrap();
            assert_close(
                &got,
                &a32_64.singular_values().unwrap(),
                2e-6,
                &format!("f32 {m}×{n}"),
            );
        }
        // A rank-2 matrix: the rest are zeros to rounding.
        let u = Mat::<f64>::from_fn(50, 2, |_, _| lcg(&mut seed));
        let v = Mat::<f64>::from_fn(2, 30, |_, _| lcg(&mut seed));
        let a = &u * &v;
        let got = singular_values_of(a.as_ref()).unwrap();
        assert_close(&got, &a.singular_values().unwrap(), 1e-13, "rank 2");
        assert!(got[2] <= 1e-14 * got[0]);
    }

    /// Large enough for the two-stage reduction (f32, from TWO_STAGE_FROM columns): square and
    /// tall, against faer's f64 SVD of the same f32 matrix.
    #[test]
    fn f32_matrices_past_the_two_stage_threshold() {
        let mut seed = 23;
        for (m, n) in [(TWO_STAGE_FROM, TWO_STAGE_FROM), (700, 650)] {
            let a32 = Mat::<f32>::from_fn(m, n, |_, _| lcg(&mut seed) as f32);
            let want = Mat::<f64>::from_fn(m, n, |i, j| a32[(i, j)] as f64)
                .singular_values()
                .unwrap();
            let got = singular_values_of(a32.as_ref()).unwrap();
            assert_close(&got, &want, 2e-6, &format!("f32 {m}×{n}"));
        }
    }
}

/// A reproducible uniform in [-0.5, 0.5) for the tests of the linear algebra.
#[cfg(test)]
pub(crate) mod test_rng {
    pub fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}
