//! Tensors gradlens creates, always in the backend's own dtypes (used by the blocks, the loader
//! and the measurement alike).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// A float tensor in the backend's own float dtype, whatever the device's default dtype is.
///
/// Burn 0.21 keeps one default dtype per device *type*: `NdArray<f32>` and `NdArray<f64>` share
/// `NdArrayDevice`, so in a process that uses both, a plain `from_data` could silently give an f64
/// model f32 tensors. Every tensor gradlens creates goes through these two functions.
pub fn float_tensor<B: Backend, const D: usize>(
    data: TensorData,
    device: &B::Device,
) -> Tensor<B, D> {
    use burn::tensor::Element;
    let dtype = <B::FloatElem as Element>::dtype();
    Tensor::from_data(data.convert::<B::FloatElem>(), (device, dtype))
}

/// Zeros in the backend's own float dtype (see [`float_tensor`]).
pub fn zeros<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    use burn::tensor::Element;
    Tensor::zeros(shape, (device, <B::FloatElem as Element>::dtype()))
}

/// An int tensor in the backend's own int dtype (see [`float_tensor`]).
pub fn int_tensor<B: Backend, const D: usize>(
    values: Vec<i64>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D, burn::tensor::Int> {
    use burn::tensor::Element;
    let dtype = <B::IntElem as Element>::dtype();
    Tensor::from_data(
        TensorData::new(values, shape).convert::<B::IntElem>(),
        (device, dtype),
    )
}
