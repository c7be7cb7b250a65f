//! Two-stage bidiagonalisation (f32): the dense matrix is reduced to an upper band of width b by
//! blocked Householder QR and LQ steps (faer's block reflectors: matrix–matrix products), then the
//! band to bidiagonal form by Householder bulge chasing (each reflector b long, on a small window
//! of the band). The one-stage reduction spends half its work in matrix–vector products over the
//! whole trailing matrix and is bound by memory bandwidth once the matrix outgrows the L2 cache;
//! this one reads the trailing matrix once per b columns. Measured on the development machine, one
//! thread, b = 16, best of 6 alternated: 0.89× faer's one-stage time at n = 640, 0.85× at 784,
//! 0.75× at 896, 0.72× at 1024, no gain at 549 (docs/performance.md). Only the diagonal and
//! superdiagonal are returned (singular values only: no U or V is formed).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::householder;
use faer::reborrow::*;
use faer::{Conj, Mat, Par};

/// Band width of the first stage.
pub const BAND: usize = 16;

/// Reduce `a` (m ≥ n) in place to upper band form with bandwidth `b`: afterwards only the entries
/// (i, j) with i ≤ j ≤ i + b of its top n × n block are nonzero, and its singular values are
/// those of the input.
pub fn to_band(a: &mut Mat<f32>, b: usize) {
    let (m, n) = a.shape();
    assert!(m >= n && b >= 1);
    let mut k = 0;
    while k < n {
        let w = b.min(n - k);
        {
            // Left: QR of the column panel, its reflectors applied to the columns to the right.
            let sub = a.as_mut().submatrix_mut(k, k, m - k, n - k);
            let (mut panel, rest) = sub.split_at_col_mut(w);
            let kk = w.min(m - k);
            let mut t = Mat::<f32>::zeros(kk, kk);
            crate::spectra::householder::householder_qr_in_place(panel.rb_mut(), t.as_mut());
            if rest.ncols() > 0 {
                let mut mem = MemBuffer::new(
                    householder::apply_block_householder_transpose_on_the_left_in_place_scratch::<
                        f32,
                    >(m - k, kk, rest.ncols()),
                );
                householder::apply_block_householder_transpose_on_the_left_in_place_with_conj(
                    panel.rb().subcols(0, kk),
                    t.as_ref(),
                    Conj::No,
                    rest,
                    Par::Seq,
                    MemStack::new(&mut mem),
                );
            }
            for j in 0..w {
                for i in (j + 1)..(m - k) {
                    panel[(i, j)] = 0.0;
                }
            }
        }
        let l = n - k - w;
        if l > 1 {
            // Right: LQ of the row panel (the QR of its transpose), its reflectors applied to the
            // rows below; the panel becomes [Rᵀ 0].
            let mut rt = a.as_ref().submatrix(k, k + w, w, l).transpose().to_owned();
            let w2 = w.min(l);
            let mut t = Mat::<f32>::zeros(w2, w2);
            crate::spectra::householder::householder_qr_in_place(rt.as_mut(), t.as_mut());
            let trail = a.as_mut().submatrix_mut(k + w, k + w, m - k - w, l);
            let mut mem = MemBuffer::new(
                householder::apply_block_householder_on_the_right_in_place_scratch::<f32>(
                    l,
                    w2,
                    m - k - w,
                ),
            );
            householder::apply_block_householder_on_the_right_in_place_with_conj(
                rt.as_ref().subcols(0, w2),
                t.as_ref(),
                Conj::No,
                trail,
                Par::Seq,
                MemStack::new(&mut mem),
            );
            for i in 0..w {
                for j in 0..l {
                    a[(k + i, k + w + j)] = if j < w2 && j <= i { rt[(j, i)] } else { 0.0 };
                }
            }
        }
        k += w;
    }
}

/// A Householder reflector H = I − τ v vᵀ with H x = β e₁: `x` becomes v (v₀ = 1); returns (τ, β).
#[inline(always)]
fn householder_of(x: &mut [f32]) -> (f32, f32) {
    let alpha = x[0];
    let sigma: f32 = x[1..].iter().map(|v| v * v).sum();
    if sigma == 0.0 {
        x[0] = 1.0;
        return (0.0, alpha);
    }
    let norm = (alpha * alpha + sigma).sqrt();
    let beta = if alpha >= 0.0 { -norm } else { norm };
    let s = 1.0 / (alpha - beta);
    for v in &mut x[1..] {
        *v *= s;
    }
    x[0] = 1.0;
    ((beta - alpha) / beta, beta)
}

#[inline(always)]
fn dot(v: &[f32], x: &[f32]) -> f32 {
    let n = v.len().min(x.len());
    let (v, x) = (&v[..n], &x[..n]);
    let mut acc = [0f32; 16];
    let mut vc = v.chunks_exact(16);
    let mut xc = x.chunks_exact(16);
    for (a, b) in (&mut vc).zip(&mut xc) {
        for k in 0..16 {
            acc[k] = a[k].mul_add(b[k], acc[k]);
        }
    }
    // A tree, not a chain, of additions.
    for k in 0..8 {
        acc[k] += acc[k + 8];
    }
    for k in 0..4 {
        acc[k] += acc[k + 4];
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (a, b) in vc.remainder().iter().zip(xc.remainder()) {
        s = a.mul_add(*b, s);
    }
    s
}

#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    for i in 0..n {
        y[i] = alpha.mul_add(x[i], y[i]);
    }
}

/// The n × n upper band matrix of bandwidth `b` in `a` (column-major, leading dimension n) to
/// upper bidiagonal form by bulge chasing; returns its diagonal and superdiagonal.
///
/// Sweep r annihilates row r beyond the superdiagonal with a reflector from the right on columns
/// r+1..=r+b, which fills the block below the diagonal; a reflector from the left on those rows
/// clears column r+1 below the diagonal and fills b − 1 entries beyond the band in row r+1, which
/// the next pair of reflectors, b columns further on, clears, and so on to the end of the matrix.
fn band_to_bidiagonal(a: &mut [f32], n: usize, b: usize) -> (Vec<f64>, Vec<f64>) {
    struct Chase<'a> {
        a: &'a mut [f32],
        n: usize,
        b: usize,
    }
    impl pulp::WithSimd for Chase<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            chase(self.a, self.n, self.b)
        }
    }
    // Compiled for the CPU's widest vector instructions (the loops are written for the compiler
    // to vectorise); pulp picks the version at run time.
    pulp::Arch::new().dispatch(Chase { a, n, b });
    let d = (0..n).map(|i| a[i + i * n] as f64).collect();
    let e = (0..n.saturating_sub(1))
        .map(|i| a[i + (i + 1) * n] as f64)
        .collect();
    (d, e)
}

#[inline(always)]
fn chase(a: &mut [f32], n: usize, b: usize) {
    let at = |i: usize, j: usize| i + j * n;
    let mut v = vec![0f32; b + 1];
    let mut w = vec![0f32; 2 * b + 2];
    for r in 0..n.saturating_sub(1) {
        let mut row = r;
        let mut c0 = r + 1;
        let mut c1 = (r + b).min(n - 1);
        loop {
            let len = c1 + 1 - c0;
            if len >= 2 {
                // From the right on columns c0..=c1: clear a[row, c0+1..=c1]; rows row+1..=c1
                // hold the rest of these columns' entries.
                for j in 0..len {
                    v[j] = a[at(row, c0 + j)];
                }
                let (tau, beta) = householder_of(&mut v[..len]);
                if tau != 0.0 {
                    let r0 = row + 1;
                    let nr = c1 + 1 - r0;
                    let w = &mut w[..nr];
                    w.iter_mut().for_each(|x| *x = 0.0);
                    for (j, &vj) in v[..len].iter().enumerate() {
                        let s = at(r0, c0 + j);
                        axpy(vj, &a[s..s + nr], w);
                    }
                    for (j, &vj) in v[..len].iter().enumerate() {
                        let s = at(r0, c0 + j);
                        axpy(-tau * vj, w, &mut a[s..s + nr]);
                    }
                }
                a[at(row, c0)] = beta;
                for j in 1..len {
                    a[at(row, c0 + j)] = 0.0;
                }
                // From the left on rows c0..=c1: clear a[c0+1..=c1, c0]; the rows reach column
                // c1 + b at most.
                let s = at(c0, c0);
                v[..len].copy_from_slice(&a[s..s + len]);
                let (tau, beta) = householder_of(&mut v[..len]);
                if tau != 0.0 {
                    for j in (c0 + 1)..=(c1 + b).min(n - 1) {
                        let s = at(c0, j);
                        let col = &mut a[s..s + len];
                        let f = -tau * dot(&v[..len], col);
                        axpy(f, &v[..len], col);
                    }
                }
                a[at(c0, c0)] = beta;
                for i in 1..len {
                    a[at(c0 + i, c0)] = 0.0;
                }
            }
            // The fill now lies in row c0, columns c0 + b + 1 ..= c1 + b.
            let nc0 = c0 + b;
            if nc0 > n - 1 {
                break;
            }
            let nc1 = (c1 + b).min(n - 1);
            if nc1 <= nc0 {
                break;
            }
            row = c0;
            c0 = nc0;
            c1 = nc1;
        }
    }
}

/// Bidiagonal form of `a` (m ≥ n) by the two stages; `a` is overwritten. Returns the diagonal and
/// superdiagonal (f64).
pub fn bidiagonalise(a: &mut Mat<f32>, b: usize) -> (Vec<f64>, Vec<f64>) {
    let n = a.ncols();
    to_band(a, b);
    let mut band: Vec<f32> = Vec::with_capacity(n * n);
    for j in 0..n {
        band.extend((0..n).map(|i| a[(i, j)]));
    }
    band_to_bidiagonal(&mut band, n, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        crate::spectra::svd::test_rng::lcg(seed) as f32
    }

    /// Against faer's f64 SVD of the same f32 matrix: every shape class (square, tall, smaller
    /// than the band, a band width that does not divide n), rank-deficient and graded inputs.
    #[test]
    fn same_singular_values_as_a_dense_svd() {
        let mut seed = 17;
        let cases: &[(usize, usize, usize)] = &[
            (1, 1, 4),
            (2, 2, 4),
            (5, 3, 4),
            (7, 7, 16),
            (40, 40, 4),
            (41, 37, 8),
            (97, 97, 16),
            (130, 100, 16),
            (120, 120, 32),
        ];
        for &(m, n, b) in cases {
            for kind in 0..3 {
                let a = Mat::<f32>::from_fn(m, n, |i, j| match kind {
                    // Rank 2.
                    1 => ((i % 7) as f32 - 3.0) * ((j % 5) as f32 + 1.0) + (i % 2) as f32,
                    // Columns graded over 6 orders of magnitude.
                    2 => lcg(&mut seed) * 10f32.powi(-((j * 6 / n.max(1)) as i32)),
                    _ => lcg(&mut seed),
                });
                let want = Mat::<f64>::from_fn(m, n, |i, j| a[(i, j)] as f64)
                    .singular_values()
                    .unwrap();
                let mut w = a.clone();
                let (d, e) = bidiagonalise(&mut w, b);
                let got = crate::spectra::svd::bidiagonal_singular_values(&d, &e, 1e-7).unwrap();
                assert_eq!(got.len(), want.len());
                for (g, x) in got.iter().zip(&want) {
                    assert!(
                        (g - x).abs() <= 2e-6 * want[0].max(f64::MIN_POSITIVE),
                        "{m}×{n} b={b} kind {kind}: {g:e} vs {x:e} (σ_max {:e})",
                        want[0]
                    );
                }
            }
        }
    }
}
