//! The shared building blocks every family composes: linear projections in the checkpoint's
//! `[out, in]` layout, RMSNorm (plain and Gemma's `1 + w`), rotary embedding in the Hugging Face
//! half-split ("rotate_half") layout with optional frequency scaling, grouped-query attention with
//! optional sliding window and logit soft-capping, and the gated MLP.
//!
//! All blocks work on one sequence (batch 1) as `[tokens, features]` tensors.

use crate::family::{Capture, Captured};
use crate::loader::Loader;
use crate::ops::{ModelBackend, attention, linear, matmul, softmax, swiglu};
pub use crate::tensor::{float_tensor, int_tensor, zeros};
use burn::module::{Module, Param};
use burn::tensor::activation::gelu_approximate;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use gradlens_core::Result;

/// `y = x Wᵀ + b` with `W` stored `[out, in]` as in the checkpoint (HF `nn.Linear`).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The checkpoint name of a measured weight: its input and output gradient can be captured
    /// (the low-rank factors of its gradient).
    #[module(skip)]
    pub measured_as: Option<String>,
}

impl<B: ModelBackend> Linear<B> {
    pub fn load(
        l: &mut Loader<'_, B>,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight_name = format!("{name}.weight");
        let weight = l.matrix(&weight_name, [d_out, d_in])?;
        let measured_as = l
            .is_selected(&weight_name)
            .then(|| l.stored_name(&weight_name));
        let bias = if bias {
            Some(l.vector(&format!("{name}.bias"), d_out)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            measured_as,
        })
    }

    /// [`Linear::forward`], recording the factors of this weight's gradient when the sequence
    /// captures them: the input X and a zero "probe" added to the output, whose gradient is Δ
    /// (the loss gradient w.r.t. the output), so that the weight gradient is G = Δᵀ X.
    pub fn forward_ctx(&self, x: Tensor<B, 2>, ctx: &SequenceContext<'_, B>) -> Tensor<B, 2> {
        self.forward_shared(x, ctx, &SharedInput::default())
    }

    /// [`Linear::forward_ctx`] for projections that read the same input (q, k and v; gate and
    /// up): X is recorded once, so it is copied to the host and factorised once.
    pub fn forward_shared(
        &self,
        x: Tensor<B, 2>,
        ctx: &SequenceContext<'_, B>,
        shared: &SharedInput,
    ) -> Tensor<B, 2> {
        let y = self.forward(x.clone());
        match (&self.measured_as, ctx.capture) {
            (Some(name), Some(capture)) => {
                let [t, out] = y.dims();
                let probe: Tensor<B, 2> = zeros([t, out], &ctx.device).require_grad();
                let input = match shared.0.get() {
                    Some(slot) => slot,
                    None => {
                        let mut inputs = capture.inputs.borrow_mut();
                        inputs.push(x);
                        shared.0.set(Some(inputs.len() - 1));
                        inputs.len() - 1
                    }
                };
                capture.entries.borrow_mut().push(Captured {
                    name: name.clone(),
                    input,
                    probe: probe.clone(),
                });
                y + probe
            }
            _ => y,
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = linear(x, self.weight.val());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze_dim(0),
            None => y,
        }
    }
}

/// Which RMSNorm a family uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `w · x / rms(x)` (Llama, Qwen2, Mistral).
    Plain,
    /// `(1 + w) · x / rms(x)` (Gemma, Gemma 2).
    OnePlusWeight,
}

/// A family's RMSNorm: its kind and epsilon (every norm of a family shares them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormSpec {
    pub kind: NormKind,
    pub eps: f64,
}

impl NormSpec {
    /// `w · x / rms(x)` with this epsilon.
    pub fn plain(eps: f64) -> Self {
        Self {
            kind: NormKind::Plain,
            eps,
        }
    }

    /// Gemma's `(1 + w) · x / rms(x)` with this epsilon.
    pub fn one_plus_weight(eps: f64) -> Self {
        Self {
            kind: NormKind::OnePlusWeight,
            eps,
        }
    }
}

#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
    #[module(skip)]
    pub kind: NormKind,
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(l: &mut Loader<'_, B>, name: &str, dim: usize, spec: NormSpec) -> Result<Self> {
        let identity = match spec.kind {
            NormKind::Plain => 1.0,
            NormKind::OnePlusWeight => 0.0,
        };
        let weight = l.norm_scale(&format!("{name}.weight"), dim, identity)?;
        Ok(Self {
            weight,
            eps: spec.eps,
            kind: spec.kind,
        })
    }

    /// Normalised in the compute dtype (f32 or f64: never below f32).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let var = x.clone().powi_scalar(2).mean_dim(1);
        let normed = x * (var + self.eps).sqrt().recip();
        let w = self.weight.val().unsqueeze_dim(0);
        match self.kind {
            NormKind::Plain => normed * w,
            NormKind::OnePlusWeight => normed * (w + 1.0),
        }
    }
}

/// How rotary frequencies are scaled (`rope_scaling` in config.json).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`"linear"`).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's band-wise scaling (`"llama3"`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN (`"yarn"`, arXiv 2309.00071, as transformers computes it): frequencies between the
    /// interpolated and the original ones along a ramp over the dimensions, and cos/sin multiplied
    /// by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        /// Round the ramp's ends outwards (transformers' `truncate`, default true).
        truncate: bool,
        attention_factor: f64,
    },
}

/// One rotary table: inverse frequencies and the factor on cos and sin (1 but for YaRN).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    pub inv_freq: Vec<f64>,
    pub scale: f64,
}

impl RopeTable {
    /// The table of `theta` and `scaling` for heads of `head_dim`.
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Self {
        Self {
            inv_freq: inverse_frequencies(head_dim, theta, scaling),
            scale: match *scaling {
                RopeScaling::Yarn {
                    attention_factor, ..
                } => attention_factor,
                _ => 1.0,
            },
        }
    }
}

/// Rotary tables for one sequence, computed on the host in f64 and stored in the compute dtype.
pub struct Rotary<B: Backend> {
    /// `[tokens, head_dim]`, the frequencies repeated for both halves.
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

/// `inv_freq[i] = θ^(−2i/d)`, scaled as configured.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f64> {
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    match *scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_ctx,
        } => {
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen > low_freq_wavelen {
                        f / factor
                    } else if wavelen < high_freq_wavelen {
                        f
                    } else {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: old_ctx,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            let dim = head_dim as f64;
            // The dimension at which `rotations` full turns fit in the original context.
            let correction = |rotations: f64| {
                dim * (old_ctx / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, high) = (low.max(0.0), high.min(dim - 1.0));
            let high = if low == high { high + 0.001 } else { high };
            base.into_iter()
                .enumerate()
                .map(|(i, f)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    f / factor * (1.0 - extrapolation) + f * extrapolation
                })
                .collect()
        }
    }
}

impl<B: Backend> Rotary<B> {
    pub fn new(tokens: usize, table: &RopeTable, device: &B::Device) -> Self {
        let (inv_freq, scale) = (&table.inv_freq, table.scale);
        let half = inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(tokens * dim);
        let mut sin = Vec::with_capacity(tokens * dim);
        for t in 0..tokens {
            for rep in 0..2 {
                let _ = rep;
                for f in inv_freq {
                    let angle = t as f64 * f;
                    cos.push(angle.cos() * scale);
                    sin.push(angle.sin() * scale);
                }
            }
        }
        let make = |v: Vec<f64>| float_tensor(TensorData::new(v, [tokens, dim]), device);
        Self {
            cos: make(cos),
            sin: make(sin),
        }
    }

    /// Apply to `[heads, tokens, head_dim]`: `x·cos + rotate_half(x)·sin`.
    pub fn apply(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, _, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().narrow(2, 0, half);
        let x2 = x.clone().narrow(2, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
        x * self.cos.clone().unsqueeze_dim(0) + rotated * self.sin.clone().unsqueeze_dim(0)
    }
}

/// Marks projections of one input within a forward pass (see [`Linear::forward_shared`]).
#[derive(Default)]
pub struct SharedInput(std::cell::Cell<Option<usize>>);

/// Per-sequence tables and masks shared by all layers of one forward pass.
pub struct SequenceContext<'a, B: Backend> {
    /// One table per rotary kind of the model (Gemma 3: local and global layers).
    pub rotary: Vec<Rotary<B>>,
    /// Added to the attention scores: 0 where key j is visible from query i (j ≤ i), −∞ where
    /// it is hidden. An addition, not a masked fill, so the backward pass has nothing to do for
    /// it (the softmax already gives the hidden scores a zero gradient).
    pub causal_bias: Tensor<B, 2>,
    /// The sliding-window bias of the last window asked for (Gemma 2 alternates per layer).
    sliding_bias: std::cell::RefCell<Option<(usize, Tensor<B, 2>)>>,
    pub tokens: usize,
    pub device: B::Device,
    /// Where measured projections record their gradient factors, when asked.
    pub capture: Option<&'a Capture<B>>,
}

impl<'a, B: Backend> SequenceContext<'a, B> {
    pub fn new(
        tokens: usize,
        rope: &[RopeTable],
        device: &B::Device,
        capture: Option<&'a Capture<B>>,
    ) -> Self {
        Self {
            rotary: rope
                .iter()
                .map(|table| Rotary::new(tokens, table, device))
                .collect(),
            causal_bias: mask_bias(Tensor::<B, 2, Bool>::tril_mask([tokens, tokens], 0, device)),
            sliding_bias: Default::default(),
            tokens,
            device: device.clone(),
            capture,
        }
    }

    /// [`SequenceContext::sliding_mask`] as an additive bias (0 visible, −∞ hidden), built once per
    /// window and sequence.
    pub fn sliding_bias(&self, window: usize) -> Tensor<B, 2> {
        let mut cached = self.sliding_bias.borrow_mut();
        match cached.as_ref() {
            Some((w, bias)) if *w == window => bias.clone(),
            _ => {
                let bias = mask_bias(self.sliding_mask(window));
                *cached = Some((window, bias.clone()));
                bias
            }
        }
    }

    /// Causal mask restricted to a sliding window: key j visible from query i iff 0 ≤ i − j < window.
    pub fn sliding_mask(&self, window: usize) -> Tensor<B, 2, Bool> {
        let t = self.tokens;
        let mut v = Vec::with_capacity(t * t);
        for i in 0..t {
            for j in 0..t {
                v.push(i64::from(j > i || i - j >= window));
            }
        }
        // Through an int tensor: bool tensors from host data are not supported by every backend
        // (burn-cuda stores bools as u8 and rejects them).
        int_tensor::<B, 2>(v, [t, t], &self.device).greater_elem(0)
    }
}

/// 0 where `hidden` is false, −∞ where it is true.
fn mask_bias<B: Backend>(hidden: Tensor<B, 2, Bool>) -> Tensor<B, 2> {
    zeros(hidden.dims(), &hidden.device()).mask_fill(hidden, f64::NEG_INFINITY)
}

/// Options that differ between families' attention.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOptions {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q·kᵀ` (usually `head_dim^-0.5`; Gemma 2: `query_pre_attn_scalar^-0.5`).
    pub scale: f64,
    /// `tanh(s / cap) · cap` on the scores before the mask (Gemma 2).
    pub logit_softcap: Option<f64>,
    /// Keys further back than this are hidden (Mistral, Gemma 2's even layers).
    pub sliding_window: Option<usize>,
    /// q/k/v projections carry a bias (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// The o projection carries a bias (Llama's `attention_bias`).
    pub o_bias: bool,
    /// RMSNorm of the queries and keys before the rotary embedding (Qwen3, Gemma 3, OLMo 2).
    pub qk_norm: QkNorm,
    /// Which of the model's rotary tables this layer uses ([`DecoderSpec::rope`]).
    pub rope: usize,
}

impl AttentionOptions {
    /// Plain attention: scale `head_dim^-0.5`, no soft-cap, window, bias or q/k norm, rotary table 0.
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self {
            heads,
            kv_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
            logit_softcap: None,
            sliding_window: None,
            qkv_bias: false,
            o_bias: false,
            qk_norm: QkNorm::None,
            rope: 0,
        }
    }
}

/// Where the q/k RMSNorm applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QkNorm {
    None,
    /// Over each head's `head_dim` features, one scale of `head_dim` shared by the heads
    /// (Qwen3, Gemma 3: `q_norm.weight` `[head_dim]`).
    PerHead(NormSpec),
    /// Over the whole projection, before it is split into heads (OLMo 2: `q_norm.weight`
    /// `[heads · head_dim]`, `k_norm.weight` `[kv_heads · head_dim]`).
    Whole(NormSpec),
}

/// Multi-head attention with grouped key/value heads (GQA, MQA as the special case of one).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    #[module(skip)]
    pub opts: AttentionOptions,
}

impl<B: ModelBackend> Attention<B> {
    /// Loads `{prefix}.{q,k,v,o}_proj` (and `q_norm`, `k_norm`) in the checkpoint's order.
    pub fn load(
        l: &mut Loader<'_, B>,
        prefix: &str,
        hidden: usize,
        opts: AttentionOptions,
    ) -> Result<Self> {
        let (h, kv, d) = (opts.heads, opts.kv_heads, opts.head_dim);
        let q_proj = Linear::load(l, &format!("{prefix}.q_proj"), hidden, h * d, opts.qkv_bias)?;
        let k_proj = Linear::load(
            l,
            &format!("{prefix}.k_proj"),
            hidden,
            kv * d,
            opts.qkv_bias,
        )?;
        let v_proj = Linear::load(
            l,
            &format!("{prefix}.v_proj"),
            hidden,
            kv * d,
            opts.qkv_bias,
        )?;
        let o_proj = Linear::load(l, &format!("{prefix}.o_proj"), h * d, hidden, opts.o_bias)?;
        let (q_norm, k_norm) = match opts.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::PerHead(spec) => (
                Some(RmsNorm::load(l, &format!("{prefix}.q_norm"), d, spec)?),
                Some(RmsNorm::load(l, &format!("{prefix}.k_norm"), d, spec)?),
            ),
            QkNorm::Whole(spec) => (
                Some(RmsNorm::load(l, &format!("{prefix}.q_norm"), h * d, spec)?),
                Some(RmsNorm::load(l, &format!("{prefix}.k_norm"), kv * d, spec)?),
            ),
        };
        Ok(Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            opts,
        })
    }

    /// A q or k projection `[tokens, n · head_dim]` after its norm, split into heads
    /// `[n, tokens, head_dim]`.
    fn heads_of(&self, y: Tensor<B, 2>, norm: &Option<RmsNorm<B>>, n: usize) -> Tensor<B, 3> {
        let (t, d) = (y.dims()[0], self.opts.head_dim);
        let y = match (norm, self.opts.qk_norm) {
            (Some(norm), QkNorm::PerHead(_)) => norm.forward(y.reshape([t * n, d])),
            (Some(norm), _) => norm.forward(y),
            (None, _) => y,
        };
        y.reshape([t, n, d]).swap_dims(0, 1)
    }

    pub fn forward(&self, x: Tensor<B, 2>, ctx: &SequenceContext<'_, B>) -> Tensor<B, 2> {
        let AttentionOptions {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.opts;
        let t = ctx.tokens;
        let shared = SharedInput::default();
        let rotary = &ctx.rotary[self.opts.rope];
        let q = self.q_proj.forward_shared(x.clone(), ctx, &shared);
        let q = rotary.apply(self.heads_of(q, &self.q_norm, heads));
        let k = self.k_proj.forward_shared(x.clone(), ctx, &shared);
        let k = rotary.apply(self.heads_of(k, &self.k_norm, kv_heads));
        let v = self.v_proj.forward_shared(x, ctx, &shared);
        let v = v.reshape([t, kv_heads, head_dim]).swap_dims(0, 1);
        let (k, v) = (
            repeat_kv(k, heads / kv_heads),
            repeat_kv(v, heads / kv_heads),
        );

        let bias = match self.opts.sliding_window {
            Some(w) if w < t => ctx.sliding_bias(w),
            _ => ctx.causal_bias.clone(),
        };
        // The scale on q ([heads, T, D]) rather than on the scores ([heads, T, T]).
        let q = q * self.opts.scale;
        let out = match self.opts.logit_softcap {
            // Gemma 2: soft-capped scores, composed of Burn's differentiated operations.
            Some(cap) => {
                let scores = softcap(matmul(q, k.swap_dims(1, 2)), cap);
                matmul(softmax(scores + bias.unsqueeze_dim(0), 2), v)
            }
            // Everyone else: one node with a closed-form backward pass (`ops::attention`).
            None => attention(q, k, v, bias),
        };
        let out = out.swap_dims(0, 1).reshape([t, heads * head_dim]);
        self.o_proj.forward_ctx(out, ctx)
    }
}

/// `[kv_heads, T, D]` → `[kv_heads · n_rep, T, D]`, head h reading kv head h / n_rep (as HF's repeat_kv).
fn repeat_kv<B: Backend>(x: Tensor<B, 3>, n_rep: usize) -> Tensor<B, 3> {
    if n_rep == 1 {
        return x;
    }
    let [kv, t, d] = x.dims();
    x.unsqueeze_dim::<4>(1)
        .repeat_dim(1, n_rep)
        .reshape([kv * n_rep, t, d])
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GeLU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Soft-capping `tanh(x / cap) · cap`, written as a product with `1 / cap` (computed in f64).
///
/// Burn 0.21's autodiff differentiates `tensor / scalar` as `grad · (1 / scalar as f32)`: an f32
/// reciprocal that scales every gradient of an f64 model by (1 + 3e-8) when cap = 1.5. Never divide
/// a tensor by a scalar on a differentiated path.
pub fn softcap<B: Backend, const D: usize>(x: Tensor<B, D>, cap: f64) -> Tensor<B, D> {
    (x * (1.0 / cap)).tanh() * cap
}

/// `down(act(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct GatedMlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

impl<B: ModelBackend> GatedMlp<B> {
    pub fn load(
        l: &mut Loader<'_, B>,
        prefix: &str,
        hidden: usize,
        inter: usize,
        act: Activation,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::load(l, &format!("{prefix}.gate_proj"), hidden, inter, bias)?,
            up_proj: Linear::load(l, &format!("{prefix}.up_proj"), hidden, inter, bias)?,
            down_proj: Linear::load(l, &format!("{prefix}.down_proj"), inter, hidden, bias)?,
            act,
        })
    }

    pub fn forward(&self, x: Tensor<B, 2>, ctx: &SequenceContext<'_, B>) -> Tensor<B, 2> {
        let shared = SharedInput::default();
        let gate = self.gate_proj.forward_shared(x.clone(), ctx, &shared);
        let up = self.up_proj.forward_shared(x, ctx, &shared);
        let gated = match self.act {
            // One node with a closed-form backward pass (`ops::swiglu`).
            Activation::Silu => swiglu(gate, up),
            Activation::GeluTanh => gelu_approximate(gate) * up,
        };
        self.down_proj.forward_ctx(gated, ctx)
    }
}

/// Token embedding `[vocab, hidden]`, also usable as a tied LM head.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    pub fn load(l: &mut Loader<'_, B>, name: &str, vocab: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            weight: l.matrix(&format!("{name}.weight"), [vocab, hidden])?,
        })
    }

    pub fn forward(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 2> {
        let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let idx = int_tensor::<B, 1>(idx, [ids.len()], device);
        self.weight.val().select(0, idx)
    }
}

/// The LM head: its own `lm_head.weight`, or the embedding matrix when tied.
#[derive(Module, Debug)]
pub struct LmHead<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: ModelBackend> LmHead<B> {
    /// `tied` is the family's reading of `tie_word_embeddings`; an untied checkpoint that lacks
    /// `lm_head.weight` is an error (the missing tensor is named), never silently tied.
    pub fn load(
        l: &mut Loader<'_, B>,
        embed: &Embedding<B>,
        tie_word_embeddings: bool,
        vocab: usize,
        hidden: usize,
    ) -> Result<Self> {
        if tie_word_embeddings {
            // Some tied checkpoints still store a copy of the head: accept and ignore it.
            l.ignore("lm_head.weight");
            Ok(Self {
                weight: embed.weight.clone(),
            })
        } else {
            Ok(Self {
                weight: l.matrix("lm_head.weight", [vocab, hidden])?,
            })
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        linear(x, self.weight.val())
    }
}

/// Where a decoder layer normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormPlacement {
    /// Llama, Qwen2, Mistral, Gemma, Qwen3: `h = x + attn(norm(x)); out = h + mlp(norm(h))`
    /// (`input_layernorm`, `post_attention_layernorm`).
    #[default]
    Pre,
    /// Gemma 2 and 3: the sub-layers' inputs and outputs normalised,
    /// `h = x + norm(attn(norm(x))); out = h + norm(mlp(norm(h)))` (`input_layernorm`,
    /// `post_attention_layernorm`, `pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    Sandwich,
    /// OLMo 2: only the outputs, `h = x + norm(attn(x)); out = h + norm(mlp(h))`
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`).
    PostOnly,
}

/// One decoder layer: attention and the gated MLP with residual connections, normalised as its
/// [`NormPlacement`] says. The fields are the checkpoint's module names.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: GatedMlp<B>,
    pub input_layernorm: Option<RmsNorm<B>>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
    #[module(skip)]
    pub placement: NormPlacement,
}

impl<B: ModelBackend> DecoderLayer<B> {
    /// Loads `{prefix}.self_attn`, `{prefix}.mlp` and the norms of `spec.placement`, in the order
    /// transformers registers them.
    pub fn load(
        l: &mut Loader<'_, B>,
        prefix: &str,
        spec: &DecoderSpec,
        attn: AttentionOptions,
    ) -> Result<Self> {
        let h = spec.hidden;
        let self_attn = Attention::load(l, &format!("{prefix}.self_attn"), h, attn)?;
        let mlp = GatedMlp::load(
            l,
            &format!("{prefix}.mlp"),
            h,
            spec.intermediate,
            spec.act,
            spec.mlp_bias,
        )?;
        let mut norm = |name: &str| RmsNorm::load(l, &format!("{prefix}.{name}"), h, spec.norm);
        let placement = spec.placement;
        let (sandwich, post_only) = (
            placement == NormPlacement::Sandwich,
            placement == NormPlacement::PostOnly,
        );
        Ok(Self {
            self_attn,
            mlp,
            input_layernorm: (!post_only).then(|| norm("input_layernorm")).transpose()?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            pre_feedforward_layernorm: sandwich
                .then(|| norm("pre_feedforward_layernorm"))
                .transpose()?,
            post_feedforward_layernorm: (sandwich || post_only)
                .then(|| norm("post_feedforward_layernorm"))
                .transpose()?,
            placement,
        })
    }

    pub fn forward(&self, x: Tensor<B, 2>, ctx: &SequenceContext<'_, B>) -> Tensor<B, 2> {
        let maybe = |norm: &Option<RmsNorm<B>>, y: Tensor<B, 2>| match norm {
            Some(n) => n.forward(y),
            None => y,
        };
        match self.placement {
            NormPlacement::Pre => {
                let h = x.clone() + self.self_attn.forward(maybe(&self.input_layernorm, x), ctx);
                h.clone()
                    + self
                        .mlp
                        .forward(self.post_attention_layernorm.forward(h), ctx)
            }
            NormPlacement::Sandwich | NormPlacement::PostOnly => {
                let attn = self
                    .self_attn
                    .forward(maybe(&self.input_layernorm, x.clone()), ctx);
                let h = x + self.post_attention_layernorm.forward(attn);
                let mlp = self
                    .mlp
                    .forward(maybe(&self.pre_feedforward_layernorm, h.clone()), ctx);
                h + maybe(&self.post_feedforward_layernorm, mlp)
            }
        }
    }
}

/// Everything a family decides about its decoder but the per-layer attention options: a family's
/// `load` reads its config.json into one of these and hands it to [`load_decoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    /// Every RMSNorm of the model (layers, final norm, q/k norms).
    pub norm: NormSpec,
    pub act: Activation,
    pub mlp_bias: bool,
    pub placement: NormPlacement,
    pub tie_word_embeddings: bool,
    /// Embeddings multiplied by this, in the compute dtype (Gemma: `sqrt(hidden_size)`).
    pub embed_scale: Option<f64>,
    /// `tanh(logits / cap) · cap` (Gemma 2).
    pub final_logit_softcap: Option<f64>,
    /// The rotary tables (inverse frequencies, already scaled); a layer picks one through
    /// [`AttentionOptions::rope`].
    pub rope: Vec<RopeTable>,
}

impl Default for DecoderSpec {
    /// Sizes 0 (a family sets them), Llama's choices for the rest: plain RMSNorm (eps 1e-6), SiLU,
    /// pre-norm, untied head, no embedding scale or soft-cap, no rotary table.
    fn default() -> Self {
        Self {
            vocab: 0,
            hidden: 0,
            intermediate: 0,
            layers: 0,
            norm: NormSpec::plain(1e-6),
            act: Activation::Silu,
            mlp_bias: false,
            placement: NormPlacement::Pre,
            tie_word_embeddings: false,
            embed_scale: None,
            final_logit_softcap: None,
            rope: Vec::new(),
        }
    }
}

/// Load a decoder in transformers' module order: `model.embed_tokens`, the layers
/// `model.layers.{i}` (layer i's attention as `attention(i)` says), `model.norm`, `lm_head`.
pub fn load_decoder<B: ModelBackend>(
    l: &mut Loader<'_, B>,
    spec: &DecoderSpec,
    attention: impl Fn(usize) -> AttentionOptions,
) -> Result<crate::family::FamilyModel<B>> {
    let embed_tokens = Embedding::load(l, "model.embed_tokens", spec.vocab, spec.hidden)?;
    let layers = (0..spec.layers)
        .map(|i| DecoderLayer::load(l, &format!("model.layers.{i}"), spec, attention(i)))
        .collect::<Result<Vec<_>>>()?;
    let norm = RmsNorm::load(l, "model.norm", spec.hidden, spec.norm)?;
    let lm_head = LmHead::load(
        l,
        &embed_tokens,
        spec.tie_word_embeddings,
        spec.vocab,
        spec.hidden,
    )?;
    let model = Decoder {
        embed_tokens,
        layers,
        norm,
        lm_head,
        rope: spec.rope.clone(),
        embed_scale: spec.embed_scale,
        final_logit_softcap: spec.final_logit_softcap,
    };
    Ok((Box::new(model), spec.layers))
}

/// The decoder every family shares: embedding (optionally scaled), the layers, the final norm,
/// the LM head (optionally soft-capped).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub lm_head: LmHead<B>,
    #[module(skip)]
    pub rope: Vec<RopeTable>,
    #[module(skip)]
    pub embed_scale: Option<f64>,
    #[module(skip)]
    pub final_logit_softcap: Option<f64>,
}

impl<B: ModelBackend> crate::family::CausalLm<B> for Decoder<B> {
    fn hidden(&self, ids: &[u32], capture: Option<&Capture<B>>) -> Tensor<B, 2> {
        let device = self.embed_tokens.weight.device();
        let ctx = SequenceContext::new(ids.len(), &self.rope, &device, capture);
        let mut x = self.embed_tokens.forward(ids, &device);
        if let Some(scale) = self.embed_scale {
            x = x * scale;
        }
        for layer in &self.layers {
            x = layer.forward(x, &ctx);
        }
        self.norm.forward(x)
    }

    fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = self.lm_head.forward(hidden);
        match self.final_logit_softcap {
            Some(cap) => softcap(logits, cap),
            None => logits,
        }
    }

    fn vocab_size(&self) -> usize {
        self.embed_tokens.weight.dims()[0]
    }

    fn replace_params(&mut self, replacer: &mut crate::params::ParamReplacer<B>) {
        *self = self.clone().map(replacer);
    }
}
