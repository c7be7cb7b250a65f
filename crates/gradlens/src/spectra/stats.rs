//! The paper's statistics of one gradient matrix: its entries' mean, max and min, its Frobenius
//! norm, and from its singular values (faer) their sum (nuclear norm), max and min.

use serde::{Deserialize, Serialize};

pub use crate::spectra::svd::{Real, SvdError};

/// A matrix on the host, row-major `[rows, cols]` (a gradient as the checkpoint stores the weight,
/// or a factor `[tokens, dim]`).
#[derive(Debug, Clone)]
pub struct HostMatrix<T> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

/// A gradient on the host.
pub type GradMatrix<T = f64> = HostMatrix<T>;

/// Mean, max and min of a gradient's entries and its Frobenius norm (computed where the gradient
/// is, accumulated in the compute dtype; on the CPU in f64 from the host copy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryStats {
    pub mean: f64,
    pub max: f64,
    pub min: f64,
    pub frobenius: f64,
}

/// The seven statistics of the paper, under the paper's key names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradStats {
    #[serde(rename = "M_mean")]
    pub m_mean: f64,
    #[serde(rename = "M_max")]
    pub m_max: f64,
    #[serde(rename = "M_min")]
    pub m_min: f64,
    pub frobenius_norm: f64,
    #[serde(rename = "S_sum")]
    pub s_sum: f64,
    #[serde(rename = "S_max")]
    pub s_max: f64,
    #[serde(rename = "S_min")]
    pub s_min: f64,
    /// exp(−Σ p_i ln p_i), p_i = σ_i / Σσ (arXiv 2504.10766); beyond the paper.
    pub effective_rank: f64,
    /// Σσ_i² / σ_max²; beyond the paper.
    pub stable_rank: f64,
}

/// The factors of one sample's gradient of a linear map `y = x Wᵀ (+ b)` applied at `tokens`
/// positions: G = Δᵀ X, with X `[tokens, d_in]` the inputs (shared by projections of the same
/// input, e.g. q, k and v) and Δ `[tokens, d_out]` the loss gradients w.r.t. the outputs.
#[derive(Debug, Clone)]
pub struct Factors<T> {
    pub x: std::sync::Arc<HostMatrix<T>>,
    pub delta: HostMatrix<T>,
}

impl<T> Factors<T> {
    pub fn tokens(&self) -> usize {
        self.delta.rows
    }
    pub fn d_in(&self) -> usize {
        self.x.cols
    }
    pub fn d_out(&self) -> usize {
        self.delta.cols
    }
}

/// One measured weight of one sample: entry statistics and what its singular values come from.
#[derive(Debug, Clone)]
pub struct MeasuredGrad<T> {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub entries: EntryStats,
    pub source: SpectrumSource<T>,
}

/// The dense gradient (the paper's way), its factors, or the R factors of its factors' QRs.
#[derive(Debug, Clone)]
pub enum SpectrumSource<T> {
    Dense(HostMatrix<T>),
    Factored(Factors<T>),
    /// R_Δ and R_X (`T × T`, f64) computed where the factors are ([`crate::measure::gram`]).
    Cores(Cores),
}

/// The R factors of G = Δᵀ X's factors (RᵀR = Δ Δᵀ and X Xᵀ), from [`crate::measure::gram::gram_r`].
#[derive(Debug, Clone)]
pub struct Cores {
    pub r_delta: faer::Mat<f64>,
    /// Shared by the projections of one input.
    pub r_x: std::sync::Arc<faer::Mat<f64>>,
}

/// How singular values are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spectra {
    /// The SVD of the dense gradient (the paper's way; the reference).
    Dense,
    /// From the factors: thin QR of Xᵀ and Δᵀ, then the SVD of the small core R_Δ R_xᵀ. Exact.
    Factored,
    /// Whichever path is cheaper for this matrix and sample length: floating-point operations
    /// counted, those of the bidiagonalisation weighted by their measured cost (see
    /// [`Spectra::factored`]).
    #[default]
    Auto,
    /// The factored path with the QRs done where the factors are, by shifted CholeskyQR3
    /// ([`crate::measure::gram`]: Gram products on the backend, `T × T` Cholesky factors on the host), for
    /// matrices whose smaller side has at least as many rows as the sample has tokens; dense
    /// otherwise. Exact (1e-10 of σ_max against dense in f64); meant for GPUs, where it keeps
    /// the `T × d` factors off the host.
    Gram,
}

impl std::str::FromStr for Spectra {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dense" => Ok(Spectra::Dense),
            "factored" => Ok(Spectra::Factored),
            "auto" => Ok(Spectra::Auto),
            "gram" => Ok(Spectra::Gram),
            o => Err(format!(
                "unknown spectra mode {o:?} (dense, factored, auto, gram)"
            )),
        }
    }
}

impl std::fmt::Display for Spectra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Spectra::Dense => "dense",
            Spectra::Factored => "factored",
            Spectra::Auto => "auto",
            Spectra::Gram => "gram",
        })
    }
}

impl Spectra {
    /// Whether a weight `[d_out, d_in]` measured over `tokens` positions gets its singular values
    /// from the factors.
    pub fn factored(self, tokens: usize, d_out: usize, d_in: usize) -> bool {
        match self {
            Spectra::Dense => false,
            Spectra::Factored => true,
            Spectra::Auto => factored_cost(tokens, d_out, d_in) < dense_cost(d_out, d_in),
            Spectra::Gram => tokens <= d_out.min(d_in),
        }
    }
}

/// Householder bidiagonalisation of an `m × n` matrix, singular values only (Golub & Van Loan:
/// 4·max·min² − 4/3·min³): the dominant cost of the dense SVD.
fn svd_flops(m: usize, n: usize) -> f64 {
    let (p, q) = (m.min(n) as f64, m.max(n) as f64);
    4.0 * q * p * p - 4.0 / 3.0 * p * p * p
}

/// Thin QR of an `m × t` matrix (t ≤ m): 2·m·t² − 2/3·t³.
fn qr_flops(m: usize, t: usize) -> f64 {
    let (m, t) = (m as f64, t.min(m) as f64);
    2.0 * m * t * t - 2.0 / 3.0 * t * t * t
}

/// What a floating-point operation of the bidiagonalisation costs against one of a Householder
/// QR, and one of a plain matrix product. Bidiagonalisation is half matrix–vector products
/// (bound by memory bandwidth); a blocked QR and a GEMM run at matrix–matrix speed. Measured with
/// faer 0.24 on one thread of the development machine (f32): singular values of 896² in 112 ms
/// (17 GFLOP/s), the thin QR of 896 × 784 in 15 ms (52 GFLOP/s); hence 2.5 (a little under the
/// ratio, so that at 784 tokens on 896², where the two paths measured within 10% of each other,
/// auto keeps the dense reference). Since then the bidiagonal's values come from dqds
/// ([`crate::spectra::svd`]), which shortens both paths alike; the bidiagonalisation still dominates.
const BIDIAG_WEIGHT: f64 = 2.5;
const GEMM_WEIGHT: f64 = 0.5;

/// The dense path: singular values of the `[d_out, d_in]` gradient.
fn dense_cost(d_out: usize, d_in: usize) -> f64 {
    BIDIAG_WEIGHT * svd_flops(d_out, d_in)
}

/// QRs of Δᵀ and Xᵀ (X's counted in full, although q, k and v share it), the core product, and
/// the core's singular values.
fn factored_cost(tokens: usize, d_out: usize, d_in: usize) -> f64 {
    let (ro, ri) = (tokens.min(d_out), tokens.min(d_in));
    qr_flops(d_out, tokens)
        + qr_flops(d_in, tokens)
        + GEMM_WEIGHT * (ro * ri * tokens) as f64
        + BIDIAG_WEIGHT * svd_flops(ro, ri)
}

/// R of the thin QR of `Mᵀ`, where M is row-major `[rows, cols]` (so Mᵀ is `[cols, rows]`):
/// `[min(cols, rows), rows]`.
pub fn thin_r_of_transpose<T: Real>(m: &HostMatrix<T>) -> faer::Mat<T> {
    // Mᵀ as a column-major [cols, rows] matrix is exactly M's row-major buffer.
    let mt = faer::MatRef::from_column_major_slice(&m.data, m.cols, m.rows);
    crate::spectra::svd::thin_r(mt.to_owned())
}

/// Singular values of G = Δᵀ X from R_x (the R of Xᵀ's thin QR, see [`thin_r_of_transpose`]) and
/// Δ, largest first, padded with zeros to min(d_out, d_in) values.
pub fn factored_singular_values_with<T: Real>(
    r_x: &faer::Mat<T>,
    f: &Factors<T>,
) -> Result<Vec<f64>, SvdError> {
    use faer::linalg::matmul::triangular::{BlockStructure, matmul};
    let r_d = thin_r_of_transpose(&f.delta);
    let (rows, cols) = (r_d.nrows(), r_x.nrows());
    let mut core = faer::Mat::<T>::zeros(rows, cols);
    if r_d.nrows() == r_d.ncols() && r_x.nrows() == r_x.ncols() {
        // Upper triangular times lower triangular: a third of a full product's operations.
        matmul(
            core.as_mut(),
            BlockStructure::Rectangular,
            faer::Accum::Replace,
            r_d.as_ref(),
            BlockStructure::TriangularUpper,
            r_x.transpose(),
            BlockStructure::TriangularLower,
            T::one_impl(),
            faer::Par::Seq,
        );
    } else {
        // More tokens than a dimension: trapezoidal R's.
        faer::linalg::matmul::matmul(
            core.as_mut(),
            faer::Accum::Replace,
            r_d.as_ref(),
            r_x.transpose(),
            T::one_impl(),
            faer::Par::Seq,
        );
    }
    let mut s = crate::spectra::svd::singular_values_in_place(core)?;
    s.resize(f.d_out().min(f.d_in()), 0.0);
    Ok(s)
}

/// Singular values of G = Δᵀ X from the factors, largest first, padded with zeros to
/// min(d_out, d_in) values (the rank of G is at most the number of tokens).
pub fn factored_singular_values<T: Real>(f: &Factors<T>) -> Result<Vec<f64>, SvdError> {
    factored_singular_values_with(&thin_r_of_transpose(&f.x), f)
}

/// The singular values of every measured weight of one sample, in order, one result per weight (a
/// failure leaves the others' values intact): the weights run in parallel (rayon), each inner
/// factorisation on one thread, and each shared input X is factorised once.
pub fn spectra_each<T: Real>(grads: &[MeasuredGrad<T>]) -> Vec<Result<Vec<f64>, SvdError>> {
    spectra_pool().install(|| spectra_in_pool(grads))
}

/// The threads the spectra run on: as many as rayon's global pool (`RAYON_NUM_THREADS`), at the
/// lowest CPU priority (Linux `SCHED_IDLE`; elsewhere ordinary threads).
///
/// The spectra of sample i run while sample i+1 runs forward and backward. On a machine with
/// fewer cores than both want, threads of equal priority share the cores by time slices, and a
/// GEMM whose thread loses its slice stalls the other threads of the same parallel region at
/// their barrier: on 2 cores the pipelined run was slower than running the two one after the
/// other. At idle priority the spectra take only what the forward and backward pass leaves
/// (its serial stretches, its waits); the pipeline's bounded queue lets them run in full when
/// they fall behind (the next sample's forward pass waits for the queue).
fn spectra_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("gradlens-spectra-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .expect("a thread pool")
    })
}

/// Lower the calling thread to the idle scheduling class (best effort).
#[allow(unsafe_code)]
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

fn spectra_in_pool<T: Real>(grads: &[MeasuredGrad<T>]) -> Vec<Result<Vec<f64>, SvdError>> {
    use rayon::prelude::*;
    use std::sync::Arc;
    faer::set_global_parallelism(faer::Par::Seq);
    let mut inputs: Vec<&Arc<HostMatrix<T>>> = Vec::new();
    for g in grads {
        if let SpectrumSource::Factored(f) = &g.source
            && !inputs.iter().any(|x| Arc::ptr_eq(x, &f.x))
        {
            inputs.push(&f.x);
        }
    }
    let r: Vec<faer::Mat<T>> = inputs.par_iter().map(|x| thin_r_of_transpose(x)).collect();
    grads
        .par_iter()
        .map(|g| match &g.source {
            SpectrumSource::Dense(m) => singular_values(m),
            SpectrumSource::Cores(c) => core_singular_values(&c.r_delta, &c.r_x, g.rows, g.cols),
            SpectrumSource::Factored(f) => {
                let i = inputs
                    .iter()
                    .position(|x| Arc::ptr_eq(x, &f.x))
                    .expect("input listed");
                factored_singular_values_with(&r[i], f)
            }
        })
        .collect()
}

/// Singular values, largest first (faer's bidiagonalisation, dqds on the bidiagonal; see
/// [`crate::spectra::svd`]).
pub fn singular_values<T: Real>(g: &HostMatrix<T>) -> Result<Vec<f64>, SvdError> {
    let m = faer::MatRef::from_row_major_slice(&g.data, g.rows, g.cols);
    crate::spectra::svd::singular_values_of(m)
}

/// Entry statistics and the Frobenius norm of a host matrix (accumulated in f64).
pub fn entry_stats<T: Real>(g: &HostMatrix<T>) -> EntryStats {
    let mut sum = 0.0;
    let mut sq = 0.0;
    let mut max = f64::NEG_INFINITY;
    let mut min = f64::INFINITY;
    for &x in &g.data {
        let x: f64 = x.into();
        sum += x;
        sq += x * x;
        max = max.max(x);
        min = min.min(x);
    }
    EntryStats {
        mean: sum / g.data.len() as f64,
        max,
        min,
        frobenius: sq.sqrt(),
    }
}

/// Effective rank `exp(−Σ p_i ln p_i)` with `p_i = σ_i / Σσ` (0 for a zero matrix).
pub fn effective_rank(s: &[f64]) -> f64 {
    let total: f64 = s.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h: f64 = s
        .iter()
        .map(|&x| x / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

/// Stable rank `Σσ_i² / σ_max²` (0 for a zero matrix).
pub fn stable_rank(s: &[f64]) -> f64 {
    let max = s.iter().fold(0.0f64, |m, &x| m.max(x));
    if max <= 0.0 {
        return 0.0;
    }
    s.iter().map(|x| x * x).sum::<f64>() / (max * max)
}

/// The statistics of one gradient from its entries and its singular values (largest first).
pub fn stats_from(entries: EntryStats, s: &[f64]) -> GradStats {
    GradStats {
        m_mean: entries.mean,
        m_max: entries.max,
        m_min: entries.min,
        frobenius_norm: entries.frobenius,
        s_sum: s.iter().sum(),
        s_max: s.first().copied().unwrap_or(0.0),
        s_min: s.last().copied().unwrap_or(0.0),
        effective_rank: effective_rank(s),
        stable_rank: stable_rank(s),
    }
}

/// All statistics of one gradient (dense path: the SVD of the matrix itself).
pub fn grad_stats<T: Real>(g: &HostMatrix<T>) -> Result<GradStats, SvdError> {
    Ok(stats_from(entry_stats(g), &singular_values(g)?))
}

/// Singular values of G = Δᵀ X from the R factors of X and Δ (`[T, T]` each, see [`crate::measure::gram::gram_r`]),
/// largest first, padded with zeros to `min(d_out, d_in)` values.
pub fn core_singular_values(
    r_delta: &faer::Mat<f64>,
    r_x: &faer::Mat<f64>,
    d_out: usize,
    d_in: usize,
) -> Result<Vec<f64>, SvdError> {
    let core = r_delta * r_x.transpose();
    let mut s = crate::spectra::svd::singular_values_in_place(core)?;
    s.resize(d_out.min(d_in), 0.0);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::Spectra;

    #[test]
    fn auto_picks_the_cheaper_path() {
        // Qwen2-0.5B's q/o (896²): factored for short samples, dense near the matrix size
        // (measured at 784 tokens: 3.1 s a sample factored against 2.8 s dense; at a mean of 549
        // tokens over 20 samples, 1.9 s against 3.2 s).
        assert!(Spectra::Auto.factored(300, 896, 896));
        assert!(Spectra::Auto.factored(549, 896, 896));
        assert!(Spectra::Auto.factored(700, 896, 896));
        assert!(!Spectra::Auto.factored(784, 896, 896));
        assert!(!Spectra::Auto.factored(1024, 896, 896));
        // k/v (128 × 896): the dense SVD of a 128-row matrix is already small.
        assert!(!Spectra::Auto.factored(784, 128, 896));
        // Llama-3.1-8B's 4096² at max length: factored by far.
        assert!(Spectra::Auto.factored(1024, 4096, 4096));
        assert!(Spectra::Factored.factored(1024, 128, 896));
        assert!(!Spectra::Dense.factored(10, 4096, 4096));
    }

    use super::{Factors, HostMatrix, factored_singular_values};

    use crate::spectra::svd::test_rng::lcg;

    /// The factored path against the dense SVD of G = Δᵀ X formed in f64, for every shape the
    /// core can take: tokens below both dimensions (triangular core product), between them,
    /// above both (trapezoidal R's), repeated input rows and a zero row of Δ (rank-deficient).
    #[test]
    fn factored_matches_dense_for_every_shape() {
        let mut seed = 5;
        for (t, d_out, d_in) in [
            (7, 20, 30),
            (25, 20, 30),
            (40, 20, 30),
            (12, 40, 9),
            (1, 6, 6),
            (64, 64, 64),
        ] {
            let mut x: Vec<f64> = (0..t * d_in).map(|_| lcg(&mut seed)).collect();
            let mut delta: Vec<f64> = (0..t * d_out).map(|_| lcg(&mut seed)).collect();
            if t > 3 {
                // Row 2 of X repeats row 0; the last row of Δ carries no gradient.
                for j in 0..d_in {
                    x[2 * d_in + j] = x[j];
                }
                for j in 0..d_out {
                    delta[(t - 1) * d_out + j] = 0.0;
                }
            }
            let g = faer::Mat::<f64>::from_fn(d_out, d_in, |i, j| {
                (0..t).map(|k| delta[k * d_out + i] * x[k * d_in + j]).sum()
            });
            let want = g.singular_values().unwrap();
            let f64_factors = Factors {
                x: std::sync::Arc::new(HostMatrix {
                    rows: t,
                    cols: d_in,
                    data: x.clone(),
                }),
                delta: HostMatrix {
                    rows: t,
                    cols: d_out,
                    data: delta.clone(),
                },
            };
            let got = factored_singular_values(&f64_factors).unwrap();
            assert_eq!(got.len(), want.len(), "{t}×{d_out}×{d_in}: count");
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-12 * want[0],
                    "{t}×{d_out}×{d_in} f64: {a:e} vs {b:e}"
                );
            }
            let f32_factors = Factors {
                x: std::sync::Arc::new(HostMatrix {
                    rows: t,
                    cols: d_in,
                    data: x.iter().map(|&v| v as f32).collect(),
                }),
                delta: HostMatrix {
                    rows: t,
                    cols: d_out,
                    data: delta.iter().map(|&v| v as f32).collect(),
                },
            };
            let got = factored_singular_values(&f32_factors).unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 2e-6 * want[0],
                    "{t}×{d_out}×{d_in} f32: {a:e} vs {b:e}"
                );
            }
        }
    }
}
