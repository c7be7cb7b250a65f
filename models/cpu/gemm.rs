//! Matrix products of Burn's NdArray backend through the `gemm` crate.
//!
//! NdArray 0.21 multiplies with `matrixmultiply` (AVX2 kernels only) after reshaping both operands,
//! which copies every transposed view (`x · Wᵀ`, `q · kᵀ`, `Pᵀ · g`) into a fresh contiguous
//! array, and zeroes the output before writing it. Here the product reads the operands where they
//! are, through their strides, with `gemm`'s kernels (AVX-512 where the CPU has it, chosen at run
//! time; AVX2 or scalar elsewhere) and writes an output that is never zeroed first. A batch of
//! products (the attention's heads) is spread over the rayon pool one product per task; a single
//! product uses the pool inside `gemm`. Measured in docs/performance.md ("CPU speed").
//!
//! Every operand shape the models produce (2-d, and 3-d with equal batch dimensions) takes this
//! path; anything else (broadcast batches, other dtypes) falls back to NdArray's own matmul.
//!
//! `unsafe` is allowed here alone: `gemm` takes raw pointers and strides, and the output is
//! written before it is read.
#![allow(unsafe_code)]

use burn::backend::ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayView2, ArrayViewD, IxDyn};

use super::element::Element;
use rayon::prelude::*;

/// `lhs · rhs` on NdArray tensors; `fallback` (NdArray's own matmul) for what this path does not
/// take.
pub fn matmul(
    lhs: NdArrayTensor,
    rhs: NdArrayTensor,
    fallback: fn(NdArrayTensor, NdArrayTensor) -> NdArrayTensor,
) -> NdArrayTensor {
    let out = match (&lhs, &rhs) {
        (NdArrayTensor::F32(a), NdArrayTensor::F32(b)) => {
            strided_matmul(a.view(), b.view()).map(NdArrayTensor::from)
        }
        (NdArrayTensor::F64(a), NdArrayTensor::F64(b)) => {
            strided_matmul(a.view(), b.view()).map(NdArrayTensor::from)
        }
        _ => None,
    };
    match out {
        Some(out) => out,
        None => fallback(lhs, rhs),
    }
}

/// The product of two arrays `[..batch, m, k]` and `[..batch, k, n]` with the same batch
/// dimensions; `None` for anything else.
fn strided_matmul<T>(a: ArrayViewD<'_, T>, b: ArrayViewD<'_, T>) -> Option<ArcArray<T, IxDyn>>
where
    T: Element,
{
    let nd = a.ndim();
    if nd < 2 || b.ndim() != nd || a.shape()[..nd - 2] != b.shape()[..nd - 2] {
        return None;
    }
    let (m, k, n) = (a.shape()[nd - 2], a.shape()[nd - 1], b.shape()[nd - 1]);
    if b.shape()[nd - 2] != k {
        return None;
    }
    let batch_shape = &a.shape()[..nd - 2];
    let batches: usize = batch_shape.iter().product();
    let mut out_shape = batch_shape.to_vec();
    out_shape.extend([m, n]);
    let len = batches * m * n;
    if len == 0 {
        return ArcArray::from_shape_vec(IxDyn(&out_shape), Vec::new()).ok();
    }
    let (sa, sb) = (a.strides(), b.strides());
    // Element offsets of every batch's first element, in both operands.
    let offsets = |strides: &[isize]| -> Vec<isize> {
        (0..batches)
            .map(|mut i| {
                let mut off = 0isize;
                for d in (0..nd - 2).rev() {
                    off += (i % batch_shape[d]) as isize * strides[d];
                    i /= batch_shape[d];
                }
                off
            })
            .collect()
    };
    let (oa, ob) = (offsets(sa), offsets(sb));
    let (pa, pb) = (SendPtr(a.as_ptr()), SendPtr(b.as_ptr()));
    let (a_rs, a_cs, b_rs, b_cs) = (sa[nd - 2], sa[nd - 1], sb[nd - 2], sb[nd - 1]);

    let mut out: Vec<T> = Vec::with_capacity(len);
    let dst = SendMutPtr(out.as_mut_ptr());
    let one_product = |i: usize, parallelism: gemm::Parallelism| {
        let (pa, pb, dst) = (&pa, &pb, &dst);
        // SAFETY: the views outlive this call and every offset stays inside them (the strides and
        // shapes are the views' own); each product writes its own m × n block of `out`, whose
        // capacity is `batches · m · n`.
        unsafe {
            product(
                [m, n, k],
                dst.0.add(i * m * n),
                (pa.0.offset(oa[i]), a_rs, a_cs),
                (pb.0.offset(ob[i]), b_rs, b_cs),
                parallelism,
            )
        }
    };
    let threads = rayon::current_num_threads();
    if batches == 1 {
        one_product(0, gemm::Parallelism::Rayon(threads));
    } else {
        (0..batches)
            .into_par_iter()
            .for_each(|i| one_product(i, gemm::Parallelism::None));
    }
    // SAFETY: every element of the `batches · m · n` was written above.
    unsafe { out.set_len(len) };
    ArcArray::from_shape_vec(IxDyn(&out_shape), out).ok()
}

struct SendPtr<T>(*const T);
// SAFETY: only read, from threads that the enclosing call outlives.
unsafe impl<T> Sync for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}

struct SendMutPtr<T>(*mut T);
// SAFETY: each thread writes a disjoint block, and the enclosing call outlives the threads.
unsafe impl<T> Sync for SendMutPtr<T> {}
unsafe impl<T> Send for SendMutPtr<T> {}

/// `dst ← a · b` for one product, `dst` row-major `[a.rows, b.cols]`, on the calling thread (the
/// callers run products in parallel themselves).
pub fn gemm_into<T: Element>(dst: &mut [T], a: ArrayView2<'_, T>, b: ArrayView2<'_, T>) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(k == k2 && dst.len() == m * n, "gemm_into: shapes");
    if m * n == 0 {
        return;
    }
    let (sa, sb) = (a.strides(), b.strides());
    // SAFETY: the views and `dst` are valid for the shapes checked above, through their strides.
    unsafe {
        product(
            [m, n, k],
            dst.as_mut_ptr(),
            (a.as_ptr(), sa[0], sa[1]),
            (b.as_ptr(), sb[0], sb[1]),
            gemm::Parallelism::None,
        )
    }
}

/// `dst ← a · b` with gemm for an `m × k` and a `k × n` operand given as (pointer, row stride,
/// column stride), into a row-major `m × n` destination that is written, never read.
///
/// # Safety
/// Every element the shapes and strides address must be valid to read (operands) or to write
/// (`dst`, `m · n` elements), and the destination must not overlap the operands.
unsafe fn product<T: Element>(
    [m, n, k]: [usize; 3],
    dst: *mut T,
    (a, a_rs, a_cs): (*const T, isize, isize),
    (b, b_rs, b_cs): (*const T, isize, isize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract; `read_dst` is false.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            false,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}
