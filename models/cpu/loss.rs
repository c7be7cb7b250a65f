//! The weighted negative log-likelihood node's passes on Burn's NdArray backend, row by row.
//!
//! The logits of a response are `[rows, vocab]`: 98 MB for 500 response tokens of SmolLM2's
//! 49 152-token vocabulary. The generic path runs NdArray's log-softmax (max, subtract, exp, sum,
//! log, subtract: each a pass over the whole tensor, on one core, with a scalar `exp`) and in the
//! backward pass an exponential, a product and a scatter into fresh tensors. Here the rows are
//! spread over the rayon pool and each is handled while it is in cache: forward `l = x − lse(x)`
//! (three passes over one row, the exponentials vectorised) and the row's pick; backward
//! `∂x = −a (exp(l) − δ_t)` in one pass. The formulas are those of [`crate::ops`]; parity with the
//! transformers reference covers both.

use burn::backend::ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayViewD, Ix2, IxDyn};
use rayon::prelude::*;

use super::element::Element;

/// `(Σ_r c_r · l[r, t_r], l)` with `l` the log-softmax of `logits` `[rows, vocab]`, for targets and
/// weights `[rows, 1]`; `None` for tensors this path does not take.
pub fn forward(
    logits: &NdArrayTensor,
    targets: &NdArrayTensor,
    coeff: &NdArrayTensor,
) -> Option<(NdArrayTensor, NdArrayTensor)> {
    let targets = target_indices(targets)?;
    match (logits, coeff) {
        (NdArrayTensor::F32(x), NdArrayTensor::F32(c)) => {
            let (loss, l) = forward_typed(x.view(), &targets, c.view())?;
            Some((loss.into(), l.into()))
        }
        (NdArrayTensor::F64(x), NdArrayTensor::F64(c)) => {
            let (loss, l) = forward_typed(x.view(), &targets, c.view())?;
            Some((loss.into(), l.into()))
        }
        _ => None,
    }
}

/// `∂logits = g · c_r · (δ_{j t_r} − exp(l[r, j]))` from the kept log-softmax `l`; `None` for
/// tensors this path does not take.
pub fn backward(
    l: &NdArrayTensor,
    targets: &NdArrayTensor,
    coeff: &NdArrayTensor,
    g: &NdArrayTensor,
) -> Option<NdArrayTensor> {
    let targets = target_indices(targets)?;
    match (l, coeff, g) {
        (NdArrayTensor::F32(l), NdArrayTensor::F32(c), NdArrayTensor::F32(g)) => {
            backward_typed(l.view(), &targets, c.view(), g.view()).map(Into::into)
        }
        (NdArrayTensor::F64(l), NdArrayTensor::F64(c), NdArrayTensor::F64(g)) => {
            backward_typed(l.view(), &targets, c.view(), g.view()).map(Into::into)
        }
        _ => None,
    }
}

/// The targets `[rows, 1]` as indices.
fn target_indices(t: &NdArrayTensor) -> Option<Vec<usize>> {
    let v: Vec<i64> = match t {
        NdArrayTensor::I64(t) => t.view().iter().copied().collect(),
        NdArrayTensor::I32(t) => t.view().iter().map(|&x| i64::from(x)).collect(),
        _ => return None,
    };
    v.into_iter().map(|x| usize::try_from(x).ok()).collect()
}

fn forward_typed<T: Element>(
    x: ArrayViewD<'_, T>,
    targets: &[usize],
    coeff: ArrayViewD<'_, T>,
) -> Option<(ArcArray<T, IxDyn>, ArcArray<T, IxDyn>)> {
    let x = x.into_dimensionality::<Ix2>().ok()?;
    let (rows, vocab) = x.dim();
    let coeff: Vec<T> = coeff.iter().copied().collect();
    if targets.len() != rows || coeff.len() != rows || targets.iter().any(|&t| t >= vocab) {
        return None;
    }
    let mut l = vec![T::zero(); rows * vocab];
    let picks: Vec<T> = l
        .par_chunks_mut(vocab)
        .enumerate()
        .map(|(r, out)| {
            let row = x.row(r);
            let mut max = T::neg_infinity();
            for (o, &v) in out.iter_mut().zip(row) {
                *o = v;
                if v > max {
                    max = v;
                }
            }
            let lse = max + T::ln(T::exp_shifted_sum(out, max));
            for (o, &v) in out.iter_mut().zip(row) {
                *o = v - lse;
            }
            coeff[r] * out[targets[r]]
        })
        .collect();
    let loss = picks.into_iter().fold(T::zero(), |a, b| a + b);
    Some((
        ArcArray::from_shape_vec(IxDyn(&[1]), vec![loss]).ok()?,
        ArcArray::from_shape_vec(IxDyn(&[rows, vocab]), l).ok()?,
    ))
}

fn backward_typed<T: Element>(
    l: ArrayViewD<'_, T>,
    targets: &[usize],
    coeff: ArrayViewD<'_, T>,
    g: ArrayViewD<'_, T>,
) -> Option<ArcArray<T, IxDyn>> {
    let l = l.into_dimensionality::<Ix2>().ok()?;
    let (rows, vocab) = l.dim();
    let coeff: Vec<T> = coeff.iter().copied().collect();
    let g = *g.iter().next()?;
    if targets.len() != rows || coeff.len() != rows {
        return None;
    }
    let mut d = vec![T::zero(); rows * vocab];
    d.par_chunks_mut(vocab).enumerate().for_each(|(r, out)| {
        let a = g * coeff[r];
        for (o, &v) in out.iter_mut().zip(l.row(r)) {
            *o = v;
        }
        T::exp_shifted_sum(out, T::zero());
        let neg = T::zero() - a;
        for o in out.iter_mut() {
            *o = neg * *o;
        }
        out[targets[r]] = out[targets[r]] + a;
    });
    ArcArray::from_shape_vec(IxDyn(&[rows, vocab]), d).ok()
}
