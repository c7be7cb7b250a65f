//! The paper's statistics of one gradient matrix: its entries' mean, max and min, its Frobenius
//! norm, and from its singular values (faer) their sum (nuclear norm), max and min.

use serde::{Deserialize, Serialize};

/// A gradient on the host, row-major `[rows, cols]` as the checkpoint stores the weight.
#[derive(Debug, Clone)]
pub struct GradMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
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

#[derive(Debug, thiserror::Error)]
#[error("singular value decomposition did not converge ({0})")]
pub struct SvdError(String);

/// The factors of one sample's gradient of a linear map `y = x Wᵀ (+ b)` applied at `tokens`
/// positions: G = Δᵀ X, with X `[tokens, d_in]` the inputs and Δ `[tokens, d_out]` the loss
/// gradients w.r.t. the outputs (row-major).
#[derive(Debug, Clone)]
pub struct Factors {
    pub tokens: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub x: Vec<f64>,
    pub delta: Vec<f64>,
}

/// How singular values are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spectra {
    /// The SVD of the dense gradient (the paper's way; the reference).
    Dense,
    /// From the factors: thin QR of Xᵀ and Δᵀ, then the SVD of the small core R_Δ R_xᵀ. Exact.
    Factored,
    /// Factored when the sample has fewer tokens than min(d_out, d_in), else dense.
    #[default]
    Auto,
}

impl std::str::FromStr for Spectra {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dense" => Ok(Spectra::Dense),
            "factored" => Ok(Spectra::Factored),
            "auto" => Ok(Spectra::Auto),
            o => Err(format!(
                "unknown spectra mode {o:?} (dense, factored, auto)"
            )),
        }
    }
}

impl Spectra {
    /// Whether a sample of `tokens` positions needs the factors captured.
    pub fn wants_factors(self, tokens: usize, min_dim: usize) -> bool {
        match self {
            Spectra::Dense => false,
            Spectra::Factored => true,
            Spectra::Auto => tokens < min_dim,
        }
    }
}

/// R of the thin QR of `Mᵀ`, where M is row-major `[rows, cols]` (so Mᵀ is `[cols, rows]`):
/// `[min(cols, rows), rows]`.
fn thin_r_of_transpose(m: &[f64], rows: usize, cols: usize) -> faer::Mat<f64> {
    // Mᵀ as a column-major [cols, rows] matrix is exactly M's row-major buffer.
    let mt = faer::MatRef::from_column_major_slice(m, cols, rows);
    mt.qr().thin_R().to_owned()
}

/// Singular values of G = Δᵀ X from the factors, largest first, padded with zeros to
/// min(d_out, d_in) values (the rank of G is at most the number of tokens).
pub fn factored_singular_values(f: &Factors) -> Result<Vec<f64>, SvdError> {
    let r_x = thin_r_of_transpose(&f.x, f.tokens, f.d_in);
    let r_d = thin_r_of_transpose(&f.delta, f.tokens, f.d_out);
    let core = &r_d * r_x.transpose();
    let mut s = core
        .singular_values()
        .map_err(|e| SvdError(format!("{e:?}")))?;
    s.resize(f.d_out.min(f.d_in), 0.0);
    Ok(s)
}

/// Singular values by the chosen path.
pub fn spectrum(g: &GradMatrix, f: Option<&Factors>, mode: Spectra) -> Result<Vec<f64>, SvdError> {
    match (mode, f) {
        (Spectra::Dense, _) | (_, None) => singular_values(g),
        (Spectra::Factored, Some(f)) => factored_singular_values(f),
        (Spectra::Auto, Some(f)) => {
            if f.tokens < f.d_out.min(f.d_in) {
                factored_singular_values(f)
            } else {
                singular_values(g)
            }
        }
    }
}

/// Singular values, largest first (faer, values only).
pub fn singular_values(g: &GradMatrix) -> Result<Vec<f64>, SvdError> {
    let m = faer::MatRef::from_row_major_slice(&g.data, g.rows, g.cols);
    m.singular_values().map_err(|e| SvdError(format!("{e:?}")))
}

/// Entry statistics and the Frobenius norm (accumulated in f64).
pub fn entry_stats(g: &GradMatrix) -> (f64, f64, f64, f64) {
    let mut sum = 0.0;
    let mut sq = 0.0;
    let mut max = f64::NEG_INFINITY;
    let mut min = f64::INFINITY;
    for &x in &g.data {
        sum += x;
        sq += x * x;
        max = max.max(x);
        min = min.min(x);
    }
    (sum / g.data.len() as f64, max, min, sq.sqrt())
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
pub fn stats_from(entries: (f64, f64, f64, f64), s: &[f64]) -> GradStats {
    let (m_mean, m_max, m_min, frobenius_norm) = entries;
    GradStats {
        m_mean,
        m_max,
        m_min,
        frobenius_norm,
        s_sum: s.iter().sum(),
        s_max: s.first().copied().unwrap_or(0.0),
        s_min: s.last().copied().unwrap_or(0.0),
        effective_rank: effective_rank(s),
        stable_rank: stable_rank(s),
    }
}

/// All statistics of one gradient (dense path: the SVD of the matrix itself).
pub fn grad_stats(g: &GradMatrix) -> Result<GradStats, SvdError> {
    Ok(stats_from(entry_stats(g), &singular_values(g)?))
}
