//! Statistics: a gradient's entries and singular values ([`stats`]), computed exactly from the
//! gradient or from its low-rank factors — the SVD of a small core ([`svd`], with a two-stage
//! bidiagonalisation for large ones: [`two_stage`], [`householder`]). No Burn here: host matrices
//! and faer (the factors' R by Gram products on the backend is `crate::measure::gram`).

pub mod householder;
pub mod stats;
pub mod svd;
pub mod two_stage;
