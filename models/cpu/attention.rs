//! The attention node's forward and backward passes on Burn's NdArray backend, one head at a time.
//!
//! The generic path ([`crate::ops`]) runs every step over the whole `[heads, T, T]` tensor, each in
//! a fresh allocation: scores, plus bias, softmax (max, subtract, exp, sum, divide), and in the
//! backward pass `∂P`, its difference with the row sums and the product with `P` — about ten
//! passes of `heads · T² · 4` bytes per layer (27 MB per pass for SmolLM2 at 870 tokens),
//! mostly on one core, with NdArray's scalar `exp`. Here the heads are spread over the rayon pool;
//! for each head the scores are written once by a GEMM into the output `P`, and the bias, the
//! exponentials (vectorised, see [`Element::exp_shifted_sum`]) and the normalisation are applied row by row
//! while the row is in cache; the backward pass does the same with `∂S = P ⊙ (∂P − rowsum(g ⊙ O))`
//! in one scratch `T × T` buffer per head. The formulas are those of [`crate::ops`]; parity with
//! the transformers reference covers both (every fixture, f32 and f64).

use burn::backend::ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayView2, ArrayView3, ArrayViewD, Axis, Ix3, IxDyn};
use rayon::prelude::*;

use super::element::Element;
use super::gemm::gemm_into;

/// `(O, P)` for q, k, v `[heads, T, D]` and an additive bias `[1, T, T]`; `None` when the tensors
/// are not all of one float type (the caller falls back to the generic path).
pub fn forward(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    bias: &NdArrayTensor,
) -> Option<(NdArrayTensor, NdArrayTensor)> {
    match (q, k, v, bias) {
        (
            NdArrayTensor::F32(q),
            NdArrayTensor::F32(k),
            NdArrayTensor::F32(v),
            NdArrayTensor::F32(b),
        ) => {
            let (o, p) = forward_typed(q.view(), k.view(), v.view(), b.view())?;
            Some((o.into(), p.into()))
        }
        (
            NdArrayTensor::F64(q),
            NdArrayTensor::F64(k),
            NdArrayTensor::F64(v),
            NdArrayTensor::F64(b),
        ) => {
            let (o, p) = forward_typed(q.view(), k.view(), v.view(), b.view())?;
            Some((o.into(), p.into()))
        }
        _ => None,
    }
}

/// The gradients `(∂q, ∂k, ∂v)` from the kept q, k, v, P, O and the output gradient g, each only
/// when asked for; `None` when the tensors are not all of one float type.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    p: &NdArrayTensor,
    o: &NdArrayTensor,
    g: &NdArrayTensor,
    want: [bool; 3],
) -> Option<[Option<NdArrayTensor>; 3]> {
    use NdArrayTensor::{F32, F64};
    match (q, k, v, p, o, g) {
        (F32(q), F32(k), F32(v), F32(p), F32(o), F32(g)) => {
            let r = backward_typed(
                q.view(),
                k.view(),
                v.view(),
                p.view(),
                o.view(),
                g.view(),
                want,
            )?;
            Some(r.map(|t| t.map(NdArrayTensor::from)))
        }
        (F64(q), F64(k), F64(v), F64(p), F64(o), F64(g)) => {
            let r = backward_typed(
                q.view(),
                k.view(),
                v.view(),
                p.view(),
                o.view(),
                g.view(),
                want,
            )?;
            Some(r.map(|t| t.map(NdArrayTensor::from)))
        }
        _ => None,
    }
}

type Shared<T> = ArcArray<T, IxDyn>;

fn three<T>(a: ArrayViewD<'_, T>) -> Option<ArrayView3<'_, T>> {
    a.into_dimensionality::<Ix3>().ok()
}

/// A zeroed buffer of `len` elements, which the caller overwrites (zeroing is cheap next to the
/// GEMMs that fill these buffers, and keeps this code free of `unsafe`).
fn zeroed<T: Element>(len: usize) -> Vec<T> {
    vec![T::zero(); len]
}

fn forward_typed<T: Element>(
    q: ArrayViewD<'_, T>,
    k: ArrayViewD<'_, T>,
    v: ArrayViewD<'_, T>,
    bias: ArrayViewD<'_, T>,
) -> Option<(Shared<T>, Shared<T>)> {
    let (q, k, v, bias) = (three(q)?, three(k)?, three(v)?, three(bias)?);
    let (h, t, d) = q.dim();
    if k.dim() != (h, t, d) || v.dim() != (h, t, d) || bias.dim() != (1, t, t) {
        return None;
    }
    let bias = bias.index_axis(Axis(0), 0);
    let mut p = zeroed::<T>(h * t * t);
    let mut o = zeroed::<T>(h * t * d);
    p.par_chunks_mut(t * t)
        .zip(o.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(i, (p_h, o_h))| {
            let (q_h, k_h, v_h) = (
                q.index_axis(Axis(0), i),
                k.index_axis(Axis(0), i),
                v.index_axis(Axis(0), i),
            );
            gemm_into(p_h, q_h, k_h.t());
            for (r, row) in p_h.chunks_mut(t).enumerate() {
                softmax_row(row, bias.row(r));
            }
            gemm_into(o_h, view2(p_h, t, t), v_h);
        });
    Some((
        ArcArray::from_shape_vec(IxDyn(&[h, t, d]), o).ok()?,
        ArcArray::from_shape_vec(IxDyn(&[h, t, t]), p).ok()?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<T: Element>(
    q: ArrayViewD<'_, T>,
    k: ArrayViewD<'_, T>,
    v: ArrayViewD<'_, T>,
    p: ArrayViewD<'_, T>,
    o: ArrayViewD<'_, T>,
    g: ArrayViewD<'_, T>,
    [want_q, want_k, want_v]: [bool; 3],
) -> Option<[Option<Shared<T>>; 3]> {
    let (q, k, v, p, o, g) = (
        three(q)?,
        three(k)?,
        three(v)?,
        three(p)?,
        three(o)?,
        three(g)?,
    );
    let (h, t, d) = q.dim();
    if [k.dim(), v.dim(), o.dim(), g.dim()]
        .iter()
        .any(|&s| s != (h, t, d))
        || p.dim() != (h, t, t)
    {
        return None;
    }
    let ds_needed = want_q || want_k;
    let alloc = |want: bool| {
        if want {
            zeroed::<T>(h * t * d)
        } else {
            Vec::new()
        }
    };
    let (mut dq, mut dk, mut dv) = (alloc(want_q), alloc(want_k), alloc(want_v));
    let (cq, ck, cv) = (
        per_head(&mut dq, h, t * d),
        per_head(&mut dk, h, t * d),
        per_head(&mut dv, h, t * d),
    );
    cq.into_par_iter()
        .zip(ck)
        .zip(cv)
        .enumerate()
        .for_each(|(i, ((dq_h, dk_h), dv_h))| {
            let [q_h, k_h, v_h, p_h, o_h, g_h] =
                [&q, &k, &v, &p, &o, &g].map(|a| a.index_axis(Axis(0), i));
            if let Some(dv_h) = dv_h {
                gemm_into(dv_h, p_h.t(), g_h);
            }
            if !ds_needed {
                return;
            }
            // ∂S = P ⊙ (g vᵀ − rowsum(g ⊙ O)), row by row in one T × T buffer.
            let mut ds = zeroed::<T>(t * t);
            gemm_into(&mut ds, g_h, v_h.t());
            for (r, row) in ds.chunks_mut(t).enumerate() {
                let sum = g_h
                    .row(r)
                    .iter()
                    .zip(o_h.row(r))
                    .fold(T::zero(), |acc, (&a, &b)| acc + a * b);
                for (x, &pr) in row.iter_mut().zip(p_h.row(r)) {
                    *x = pr * (*x - sum);
                }
            }
            let ds = view2(&ds, t, t);
            if let Some(dq_h) = dq_h {
                gemm_into(dq_h, ds, k_h);
            }
            if let Some(dk_h) = dk_h {
                gemm_into(dk_h, ds.t(), q_h);
            }
        });
    let shaped = |buf: Vec<T>| {
        (!buf.is_empty()).then(|| ArcArray::from_shape_vec(IxDyn(&[h, t, d]), buf).expect("shape"))
    };
    Some([shaped(dq), shaped(dk), shaped(dv)])
}

/// One mutable block of `len` elements per head, or `None` for every head when `buf` is empty (a
/// gradient not asked for).
fn per_head<T>(buf: &mut [T], heads: usize, len: usize) -> Vec<Option<&mut [T]>> {
    if buf.is_empty() {
        (0..heads).map(|_| None).collect()
    } else {
        buf.chunks_mut(len).map(Some).collect()
    }
}

fn view2<T>(s: &[T], rows: usize, cols: usize) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols), s).expect("shape")
}

/// `row ← softmax(row + bias)`.
fn softmax_row<T: Element>(row: &mut [T], bias: ndarray::ArrayView1<'_, T>) {
    let mut max = T::neg_infinity();
    for (x, &b) in row.iter_mut().zip(bias) {
        *x = *x + b;
        if *x > max {
            max = *x;
        }
    }
    let sum = T::exp_shifted_sum(row, max);
    let inv = T::one() / sum;
    for x in row.iter_mut() {
        *x = *x * inv;
    }
}
