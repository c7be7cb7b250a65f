//! The blocked Householder QR both the dense SVD (its thin QR) and the two-stage reduction (its
//! panels) run.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{MatMut, Par};

/// Householder QR of `a` in place (faer, one thread), in blocks of `h.nrows()` reflectors whose
/// panels are not split further (faer splits them in halves above 48² entries); `h`
/// (block size × min(m, n)) receives the blocks' triangular factors.
pub fn householder_qr_in_place<T: faer::traits::RealField>(a: MatMut<'_, T>, h: MatMut<'_, T>) {
    use faer::linalg::qr::no_pivoting::factor;
    let (m, n) = a.shape();
    let mut params: faer::Spec<factor::QrParams, T> = Default::default();
    params.config.blocking_threshold = usize::MAX;
    let mut mem = MemBuffer::new(factor::qr_in_place_scratch::<T>(
        m,
        n,
        h.nrows(),
        Par::Seq,
        params,
    ));
    factor::qr_in_place(a, h, Par::Seq, MemStack::new(&mut mem), params);
}
