//! Differentiable operations with a hand-written backward pass.
//!
//! Burn 0.21's autodiff has no softmax or log-softmax node: it records their decomposition
//! (max, subtract, exp, sum, divide or log), keeps the intermediates and, in the backward pass,
//! recomputes the exponentials and walks every step back — about a dozen passes over each
//! `[heads, T, T]` attention tensor and each `[rows, vocab]` logits tensor. Here each is one node:
//! the forward pass is the backend's own kernel (fused on LibTorch and CUDA), the state is the
//! output, and the backward pass is the closed form:
//!
//! - softmax `p`: `∂x = p ⊙ (g − Σ_dim g ⊙ p)`;
//! - log-softmax `l`: `∂x = g − exp(l) ⊙ Σ_dim g`.
//!
//! Every backend the models run on implements [`ModelBackend`]: plain backends (one line each,
//! below) use the backend's kernels; `Autodiff<B>` adds the nodes above. Parity with the
//! transformers reference (every fixture, f32 and f64) covers both formulas.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

/// A backend the models run on: Burn's [`Backend`] plus the operations above.
pub trait ModelBackend: Backend {
    /// Softmax along `dim`.
    fn model_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        Self::softmax(x, dim)
    }
    /// Log-softmax along `dim`.
    fn model_log_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        Self::log_softmax(x, dim)
    }
}

impl ModelBackend for burn::backend::NdArray<f32> {}
impl ModelBackend for burn::backend::NdArray<f64> {}
impl ModelBackend for burn::backend::Flex {}
#[cfg(feature = "tch")]
impl ModelBackend for burn::backend::LibTorch<f32> {}
#[cfg(feature = "tch")]
impl ModelBackend for burn::backend::LibTorch<f64> {}
#[cfg(feature = "cuda")]
impl ModelBackend for burn::backend::Cuda<f32, i32> {}

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn model_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        output_node::<B, C>(x, dim, B::model_softmax, |p, g, dim| {
            let gp = B::float_mul(g, p.clone());
            let sum = B::float_sum_dim(gp.clone(), dim);
            B::float_sub(gp, B::float_mul(p, sum))
        })
    }

    fn model_log_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        output_node::<B, C>(x, dim, B::model_log_softmax, |l, g, dim| {
            let sum = B::float_sum_dim(g.clone(), dim);
            B::float_sub(g, B::float_mul(B::float_exp(l), sum))
        })
    }
}

/// The input gradient from the node's output, the output gradient and the dimension.
type GradFromOutput<B> = fn(FloatTensor<B>, FloatTensor<B>, usize) -> FloatTensor<B>;

/// A one-input node along `dim` whose backward pass needs only its output.
#[derive(Debug)]
struct FromOutput<B: Backend> {
    grad: GradFromOutput<B>,
}

impl<B: Backend> Backward<B, 1> for FromOutput<B> {
    type State = (FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (out, dim) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| (self.grad)(out, g, dim));
    }
}

/// `forward(x, dim)` recorded as one node; its output is kept for `grad`.
fn output_node<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    dim: usize,
    forward: fn(FloatTensor<B>, usize) -> FloatTensor<B>,
    grad: GradFromOutput<B>,
) -> FloatTensor<Autodiff<B, C>> {
    let node = FromOutput { grad };
    match node
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = forward(x.primitive, dim);
            prep.finish((out.clone(), dim), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, dim)),
    }
}

/// Softmax along `dim`, one differentiated node (see the module docs).
pub fn softmax<B: ModelBackend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::model_softmax(
        x.into_primitive().tensor(),
        dim,
    )))
}

/// Log-softmax along `dim`, one differentiated node (see the module docs).
pub fn log_softmax<B: ModelBackend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::model_log_softmax(
        x.into_primitive().tensor(),
        dim,
    )))
}
