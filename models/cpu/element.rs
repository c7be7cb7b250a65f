//! The float types of the NdArray kernels (`gemm`, `attention`, `loss`), and a vectorisable
//! f32 exponential.

/// The float types of the CPU kernels (f32, f64): what `gemm` and the attention rows need.
pub trait Element:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + 'static
{
    fn zero() -> Self;
    fn one() -> Self;
    fn neg_infinity() -> Self;
    fn ln(self) -> Self;
    /// `x ← exp(x − shift)` for every element; returns their sum.
    fn exp_shifted_sum(x: &mut [Self], shift: Self) -> Self;
}

impl Element for f32 {
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
    fn neg_infinity() -> Self {
        f32::NEG_INFINITY
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    /// Vectorised (pulp's run-time dispatch: AVX-512, AVX2 or scalar) with [`exp_f32`].
    fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                // Eight partial sums, so that the loop vectorises (the order differs from a
                // plain left-to-right sum by rounding only).
                let mut acc = [0f32; 16];
                let mut chunks = x.chunks_exact_mut(16);
                for c in &mut chunks {
                    for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
                        *v = exp_f32(*v - shift);
                        *a += *v;
                    }
                }
                let mut sum: f32 = 0.0;
                for v in chunks.into_remainder() {
                    *v = exp_f32(*v - shift);
                    sum += *v;
                }
                sum + acc.iter().sum::<f32>()
            },
        )
    }
}

impl Element for f64 {
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
    fn neg_infinity() -> Self {
        f64::NEG_INFINITY
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    /// The reference-grade path: the standard library's `exp`.
    fn exp_shifted_sum(x: &mut [f64], shift: f64) -> f64 {
        let mut sum = 0.0;
        for v in x.iter_mut() {
            *v = (*v - shift).exp();
            sum += *v;
        }
        sum
    }
}

/// `eˣ` in f32 without a branch or a library call, so that loops over it vectorise: Cephes' `expf` (range reduction
/// by ln 2 in two parts, a degree-5 polynomial on [−ln2/2, ln2/2], the exponent set by integer
/// arithmetic); within 2 ulp of the correctly rounded value on the normal range. Below −87.3 (where
/// eˣ is no longer a normal f32, and for −∞) it returns 0; inputs above 0 do not occur here
/// (softmax rows shifted by their maximum) but are handled up to 88.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let under = x < -87.3;
    let x = x.clamp(-87.3, 88.0);
    // Round to nearest by the 1.5·2²³ trick (exact for |x·log₂e| < 2²²): `f32::round` is a
    // library call on x86 (no instruction rounds half away from zero) and would stop the loop
    // from vectorising.
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if under { 0.0 } else { y * scale }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_f32_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 10.0 {
            let want = (x as f64).exp();
            let got = super::exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(
            worst < 2.5 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(super::exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp_f32(-1000.0), 0.0);
    }
}
