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
        #[derive(Debug)]
        struct Softmax;

        impl<B: Backend> Backward<B, 1> for Softmax {
            type State = (FloatTensor<B>, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (p, dim) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |g| {
                    let gp = B::float_mul(g, p.clone());
                    let sum = B::float_sum_dim(gp.clone(), dim);
                    B::float_sub(gp, B::float_mul(p, sum))
                });
            }
        }

        match Softmax
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let p = B::model_softmax(x.primitive, dim);
                prep.finish((p.clone(), dim), p)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::model_softmax(x.primitive, dim)),
        }
    }

    fn model_log_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LogSoftmax;

        impl<B: Backend> Backward<B, 1> for LogSoftmax {
            type State = (FloatTensor<B>, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (l, dim) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |g| {
                    let sum = B::float_sum_dim(g.clone(), dim);
                    B::float_sub(g, B::float_mul(B::float_exp(l), sum))
                });
            }
        }

        match LogSoftmax
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let l = B::model_log_softmax(x.primitive, dim);
                prep.finish((l.clone(), dim), l)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::model_log_softmax(x.primitive, dim)),
        }
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
