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
//! - the weighted negative log-likelihood `L = Σ_r c_r · l[r, t_r]` (`l` the log-softmax of the
//!   logits rows, `t_r` the targets, `c_r` the per-row weights, e.g. `−1/n` on loss rows and 0 on
//!   padding): `∂logits[r, j] = g · c_r · (δ_{j t_r} − exp(l[r, j]))`. Taken apart, Burn would
//!   keep the `[rows, vocab]` log-probabilities, fill a zero tensor of that size for the gather's
//!   gradient, scatter into it, and run the log-softmax's backward pass over it: six passes over
//!   a tensor of about 0.4 GB for a Qwen2 response of 650 tokens. As one node: an exponential, a
//!   product and a scatter, in place;
//! - attention `O = softmax(q kᵀ + bias) v` (`[heads, T, D]`, the bias a constant mask): with
//!   `P` kept, `∂v = Pᵀ g`, `∂P = g vᵀ`, `∂S = P ⊙ (∂P − rowsum(g ⊙ O))` (the row sum over D
//!   instead of over T, as flash attention does), `∂q = ∂S k`, `∂k = ∂Sᵀ q`: two `[heads, T, T]`
//!   element-wise passes in the backward pass instead of five, and no mask node;
//! - the projection `y = x · Wᵀ` (`W` `[out, in]` as Hugging Face stores it): `∂W = gᵀ · x` and
//!   `∂x = g · W`, so that the weight's gradient comes back in the weight's own layout rather
//!   than as the transposed view a transpose node would leave (which every copy of it then walks
//!   column by column);
//! - the SwiGLU product `a = silu(x) ⊙ u` with `s = σ(x)`: `∂u = g ⊙ x ⊙ s`,
//!   `∂x = g ⊙ u ⊙ (s + x s (1 − s))`, from the kept `x`, `u` and `s` (Burn records three nodes
//!   and allocates a `[T, intermediate]` tensor for almost every step back).
//!
//! Every backend the models run on implements [`ModelBackend`]: plain backends (one line each,
//! below) use the backend's kernels; `Autodiff<B>` adds the nodes above. Parity with the
//! transformers reference (every fixture, f32 and f64) covers every formula.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary, unary};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps, IntTensor};
use burn::tensor::{DType, Int, Shape, Tensor, TensorMetadata, TensorPrimitive};

/// A backend the models run on: Burn's [`Backend`] plus the operations above.
pub trait ModelBackend: Backend {
    /// `lhs · rhs` for `[.., m, k]` and `[.., k, n]` tensors with the same batch dimensions.
    /// NdArray runs it through the `gemm` crate on the operands' strides (`cpu::gemm`); other
    /// backends use their own matmul.
    fn model_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
    /// `x · wᵀ` for `x` `[m, k]` and a weight `w` `[n, k]` (a Hugging Face Linear's layout).
    fn model_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::model_matmul(x, Self::float_transpose(w))
    }
    /// Softmax along `dim`.
    fn model_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        Self::softmax(x, dim)
    }
    /// `Σ_r coeff[r] · log_softmax(logits)[r, targets[r]]` as a `[1]` tensor; `logits` is
    /// `[rows, vocab]`, `targets` (int) and `coeff` are `[rows, 1]`.
    fn model_weighted_nll(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        coeff: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::model_nll_forward(logits, targets, coeff).0
    }
    /// [`ModelBackend::model_weighted_nll`] and what its backward pass keeps: the log-softmax
    /// `l` of the logits.
    fn model_nll_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        coeff: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        nll_forward::<Self>(logits, targets, coeff)
    }
    /// The logits' gradient from the kept `l` and the loss's gradient `g` (module docs).
    fn model_nll_backward(
        l: FloatTensor<Self>,
        targets: IntTensor<Self>,
        coeff: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        nll_backward::<Self>(l, targets, coeff, g)
    }
    /// `softmax(q kᵀ + bias) v` for `[heads, T, D]` q, k, v and a `[1, T, T]` additive bias.
    fn model_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::model_attention_forward(q, k, v, bias).0
    }
    /// The attention's output and its probabilities `P` (kept for the backward pass).
    fn model_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention_forward::<Self>(q, k, v, bias)
    }
    /// The attention's `[∂q, ∂k, ∂v]` from q, k, v, P, the output O and its gradient g, each
    /// computed only when `want` asks for it (formulas in the module docs).
    fn model_attention_backward(
        [q, k, v]: [FloatTensor<Self>; 3],
        p: FloatTensor<Self>,
        o: FloatTensor<Self>,
        g: FloatTensor<Self>,
        want: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3] {
        attention_backward::<Self>([q, k, v], p, o, g, want)
    }
    /// `silu(x) ⊙ u`.
    fn model_swiglu(x: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        swiglu_forward::<Self>(x, u).0
    }
}

/// The attention output and the probabilities `P`.
fn attention_forward<B: ModelBackend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let scores = B::float_add(B::model_matmul(q, B::float_swap_dims(k, 1, 2)), bias);
    let p = B::softmax(scores, 2);
    (B::model_matmul(p.clone(), v), p)
}

/// `silu(x) ⊙ u` and `σ(x)`.
fn swiglu_forward<B: Backend>(
    x: FloatTensor<B>,
    u: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let s = sigmoid::<B>(x.clone());
    (B::float_mul(B::float_mul(x, s.clone()), u), s)
}

/// `σ(x)`. In f32, Burn's `sigmoid`: one kernel on backends that have one. In f64,
/// `(1 + tanh(x/2)) / 2`, exact and stable for any x: Burn 0.21's own `sigmoid` computes in f32
/// whatever the dtype, which would cost an f64 model its precision (seen as 3e-8 relative errors
/// against the float64 reference).
fn sigmoid<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    if x.dtype() == DType::F64 {
        let t = B::float_tanh(B::float_mul_scalar(x, 0.5.into()));
        B::float_mul_scalar(B::float_add_scalar(t, 1.0.into()), 0.5.into())
    } else {
        B::sigmoid(x)
    }
}

/// `Σ_r coeff[r] · l[r, targets[r]]`.
fn weighted_picks<B: Backend>(
    l: FloatTensor<B>,
    targets: IntTensor<B>,
    coeff: FloatTensor<B>,
) -> FloatTensor<B> {
    B::float_sum(B::float_mul(B::float_gather(1, l, targets), coeff))
}

/// NdArray: the matrix products through `gemm` (`cpu::gemm`), the attention one head at a time
/// (`cpu::attention`), the loss row by row (`cpu::loss`); the generic paths for any operand those
/// do not take.
macro_rules! ndarray_model_backend {
    ($e:ty) => {
        impl ModelBackend for burn::backend::NdArray<$e> {
            fn model_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
                crate::cpu::gemm::matmul(lhs, rhs, Self::float_matmul)
            }
            fn model_attention_forward(
                q: FloatTensor<Self>,
                k: FloatTensor<Self>,
                v: FloatTensor<Self>,
                bias: FloatTensor<Self>,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                match crate::cpu::attention::forward(&q, &k, &v, &bias) {
                    Some(op) => op,
                    None => attention_forward::<Self>(q, k, v, bias),
                }
            }
            fn model_attention_backward(
                [q, k, v]: [FloatTensor<Self>; 3],
                p: FloatTensor<Self>,
                o: FloatTensor<Self>,
                g: FloatTensor<Self>,
                want: [bool; 3],
            ) -> [Option<FloatTensor<Self>>; 3] {
                match crate::cpu::attention::backward(&q, &k, &v, &p, &o, &g, want) {
                    Some(d) => d,
                    None => attention_backward::<Self>([q, k, v], p, o, g, want),
                }
            }
            fn model_nll_forward(
                logits: FloatTensor<Self>,
                targets: IntTensor<Self>,
                coeff: FloatTensor<Self>,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                match crate::cpu::loss::forward(&logits, &targets, &coeff) {
                    Some(r) => r,
                    None => nll_forward::<Self>(logits, targets, coeff),
                }
            }
            fn model_nll_backward(
                l: FloatTensor<Self>,
                targets: IntTensor<Self>,
                coeff: FloatTensor<Self>,
                g: FloatTensor<Self>,
            ) -> FloatTensor<Self> {
                match crate::cpu::loss::backward(&l, &targets, &coeff, &g) {
                    Some(d) => d,
                    None => nll_backward::<Self>(l, targets, coeff, g),
                }
            }
        }
    };
}
ndarray_model_backend!(f32);
ndarray_model_backend!(f64);
impl ModelBackend for burn::backend::Flex {}
#[cfg(feature = "tch")]
impl ModelBackend for burn::backend::LibTorch<f32> {}
#[cfg(feature = "tch")]
impl ModelBackend for burn::backend::LibTorch<f64> {}
#[cfg(feature = "cuda")]
impl ModelBackend for burn::backend::Cuda<f32, i32> {}

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn model_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        // Each operand is kept only when the other one is differentiated (as Burn's own matmul).
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        match Matmul
            .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (a, b) = (lhs.primitive, rhs.primitive);
                let state = (
                    rhs_tracked.then(|| a.clone()),
                    lhs_tracked.then(|| b.clone()),
                );
                prep.finish(state, B::model_matmul(a, b))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::model_matmul(lhs.primitive, rhs.primitive)),
        }
    }

    fn model_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
        match Projection
            .prepare::<C>([x.node.clone(), w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.primitive, w.primitive);
                let state = (w_tracked.then(|| x.clone()), x_tracked.then(|| w.clone()));
                prep.finish(state, B::model_linear(x, w))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::model_linear(x.primitive, w.primitive)),
        }
    }

    fn model_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        output_node::<B, C>(x, dim, B::model_softmax, |p, g, dim| {
            let gp = B::float_mul(g, p.clone());
            let sum = B::float_sum_dim(gp.clone(), dim);
            B::float_sub(gp, B::float_mul(p, sum))
        })
    }

    fn model_weighted_nll(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        coeff: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // The targets and weights are constants: only the logits are differentiated.
        let coeff = coeff.primitive;
        match WeightedNll
            .prepare::<C>([logits.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, l) =
                    B::model_nll_forward(logits.primitive, targets.clone(), coeff.clone());
                prep.finish((l, targets, coeff), loss)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::model_weighted_nll(logits.primitive, targets, coeff))
            }
        }
    }

    fn model_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let bias = bias.primitive;
        match AttentionCore
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.primitive, k.primitive, v.primitive);
                let (o, p) = B::model_attention_forward(q.clone(), k.clone(), v.clone(), bias);
                prep.finish((q, k, v, p, o.clone()), o)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::model_attention(
                q.primitive,
                k.primitive,
                v.primitive,
                bias,
            )),
        }
    }

    fn model_swiglu(x: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwiGlu
            .prepare::<C>([x.node.clone(), u.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, u) = (x.primitive, u.primitive);
                let (a, s) = swiglu_forward::<B>(x.clone(), u.clone());
                prep.finish((x, u, s), a)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::model_swiglu(x.primitive, u.primitive)),
        }
    }
}

/// The matrix product node: `∂lhs = g · rhsᵀ`, `∂rhs = lhsᵀ · g`, both through
/// [`ModelBackend::model_matmul`] (transposes are views); its state is the operand each needs.
#[derive(Debug)]
struct Matmul;

impl<B: ModelBackend> Backward<B, 2> for Matmul {
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (lhs, rhs) = ops.state;
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |g| B::model_matmul(g, B::float_transpose(rhs.expect("rhs kept"))),
            |g| B::model_matmul(B::float_transpose(lhs.expect("lhs kept")), g),
        );
    }
}

/// The projection node `y = x · wᵀ`: `∂x = g · w`, `∂w = gᵀ · x`, both through
/// [`ModelBackend::model_matmul`]. Taken apart (a transpose, then a matmul), the weight's
/// gradient would come back as a transposed view of `xᵀ · g`: every later use of it (the
/// optimizer's flat copy, the copy to the host, the sum with a tied embedding's gradient) would
/// walk it column by column. Here it is `[n, k]` in the weight's own layout. Its state is the
/// operand each needs.
#[derive(Debug)]
struct Projection;

impl<B: ModelBackend> Backward<B, 2> for Projection {
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w) = ops.state;
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |g| B::model_matmul(g, w.expect("w kept")),
            |g| B::model_matmul(B::float_transpose(g), x.expect("x kept")),
        );
    }
}

/// The attention node (see the module docs); its state is q, k, v, the probabilities and the
/// output.
#[derive(Debug)]
struct AttentionCore;

impl<B: ModelBackend> Backward<B, 3> for AttentionCore {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, p, o) = ops.state;
        let g = grads.consume::<B>(&ops.node);
        let want = ops.parents.each_ref().map(Option::is_some);
        let d = B::model_attention_backward([q, k, v], p, o, g, want);
        for (node, d) in ops.parents.into_iter().zip(d) {
            if let (Some(node), Some(d)) = (node, d) {
                grads.register::<B>(node.id, d);
            }
        }
    }
}

/// The attention's backward pass in the backend's own operations (see the module docs).
fn attention_backward<B: ModelBackend>(
    [q, k, v]: [FloatTensor<B>; 3],
    p: FloatTensor<B>,
    o: FloatTensor<B>,
    g: FloatTensor<B>,
    [want_q, want_k, want_v]: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let dv = want_v.then(|| B::model_matmul(B::float_swap_dims(p.clone(), 1, 2), g.clone()));
    let ds = (want_q || want_k).then(|| {
        let dp = B::model_matmul(g.clone(), B::float_swap_dims(v, 1, 2));
        let row = B::float_sum_dim(B::float_mul(g, o), 2);
        B::float_mul(B::float_sub(dp, row), p)
    });
    let dq = want_q.then(|| B::model_matmul(ds.clone().expect("∂S"), k));
    let dk = want_k.then(|| B::model_matmul(B::float_swap_dims(ds.expect("∂S"), 1, 2), q));
    [dq, dk, dv]
}

/// The SwiGLU node (see the module docs); its state is x, u and σ(x).
#[derive(Debug)]
struct SwiGlu;

impl<B: Backend> Backward<B, 2> for SwiGlu {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, u, s) = ops.state;
        let g = grads.consume::<B>(&ops.node);
        let [px, pu] = ops.parents;
        // silu(x) = x s; ∂u = g ⊙ x s; ∂x = g ⊙ u ⊙ (s + x s − x s · s).
        let xs = B::float_mul(x, s.clone());
        let du = pu.is_some().then(|| B::float_mul(g.clone(), xs.clone()));
        if let Some(node) = px {
            let xss = B::float_mul(xs.clone(), s.clone());
            let w = B::float_sub(B::float_add(s, xs), xss);
            grads.register::<B>(node.id, B::float_mul(B::float_mul(w, u), g));
        }
        if let (Some(node), Some(du)) = (pu, du) {
            grads.register::<B>(node.id, du);
        }
    }
}

/// The weighted negative log-likelihood node (see the module docs); its state is the
/// log-softmax of the logits, the targets and the weights.
#[derive(Debug)]
struct WeightedNll;

impl<B: ModelBackend> Backward<B, 1> for WeightedNll {
    type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (l, targets, coeff) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| {
            B::model_nll_backward(l, targets, coeff, g)
        });
    }
}

/// The weighted NLL and the log-softmax it keeps, in the backend's own operations.
fn nll_forward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    coeff: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let l = B::log_softmax(logits, 1);
    (weighted_picks::<B>(l.clone(), targets, coeff), l)
}

/// The weighted NLL's backward pass in the backend's own operations.
fn nll_backward<B: Backend>(
    l: FloatTensor<B>,
    targets: IntTensor<B>,
    coeff: FloatTensor<B>,
    g: FloatTensor<B>,
) -> FloatTensor<B> {
    // a_r = g · c_r; ∂logits = −a ⊙ exp(l), plus a_r at (r, t_r).
    let a = B::float_mul(coeff, B::float_reshape(g, Shape::new([1, 1])));
    let scaled = B::float_mul(B::float_exp(l), B::float_neg(a.clone()));
    B::float_scatter_add(1, scaled, targets, a)
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

/// `Σ_r coeff[r] · log_softmax(logits)[r, targets[r]]`, one differentiated node (see the module
/// docs): `logits` `[rows, vocab]`, `targets` and `coeff` `[rows, 1]`; the result has one element.
pub fn weighted_nll<B: ModelBackend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    coeff: Tensor<B, 2>,
) -> Tensor<B, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(B::model_weighted_nll(
        logits.into_primitive().tensor(),
        targets.into_primitive(),
        coeff.into_primitive().tensor(),
    )))
}

/// `lhs · rhs` (`[.., m, k]` · `[.., k, n]`, equal batch dimensions), one differentiated node
/// whose products, forward and backward, are [`ModelBackend::model_matmul`]'s.
pub fn matmul<B: ModelBackend, const D: usize>(
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::model_matmul(
        lhs.into_primitive().tensor(),
        rhs.into_primitive().tensor(),
    )))
}

/// `x · wᵀ` (`x` `[m, k]`, `w` `[n, k]` as a Hugging Face Linear stores it), one differentiated
/// node whose weight gradient comes back in the weight's layout (see [`Projection`]).
pub fn linear<B: ModelBackend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(B::model_linear(
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
    )))
}

/// `softmax(q kᵀ + bias) v`, one differentiated node (see the module docs): q, k and v
/// `[heads, T, D]` (k and v already repeated to every head, q already scaled), `bias` `[T, T]`,
/// a constant.
pub fn attention<B: ModelBackend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 2>,
) -> Tensor<B, 3> {
    Tensor::from_primitive(TensorPrimitive::Float(B::model_attention(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        bias.unsqueeze_dim::<3>(0).into_primitive().tensor(),
    )))
}

/// `silu(x) ⊙ u`, one differentiated node (see the module docs).
pub fn swiglu<B: ModelBackend>(x: Tensor<B, 2>, u: Tensor<B, 2>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(B::model_swiglu(
        x.into_primitive().tensor(),
        u.into_primitive().tensor(),
    )))
}

/// Softmax along `dim`, one differentiated node (see the module docs).
pub fn softmax<B: ModelBackend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::model_softmax(
        x.into_primitive().tensor(),
        dim,
    )))
}
