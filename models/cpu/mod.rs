//! The NdArray backend's kernels behind [`crate::ops`]: matrix products through `gemm`, the
//! attention one head at a time, the loss row by row, and the float types they share.

pub mod attention;
pub mod element;
pub mod gemm;
pub mod loss;
