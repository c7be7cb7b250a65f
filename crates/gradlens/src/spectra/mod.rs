//! Statistics: a gradient's entries and singular values ([`stats`]), computed exactly from the
//! gradient or from its low-rank factors — the SVD of a small core ([`svd`], with a two-stage
//! bidiagonalisation for large ones: [`two_stage`], [`householder`]), and the factors' R by
//! Gram products where the factors are ([`gram`]). No Burn here: host matrices and faer.

pub mod gram;
pub mod householder;
pub mod stats;
pub mod svd;
pub mod two_stage;
