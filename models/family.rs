//! What a family is to the rest of the crate: the model trait ([`CausalLm`]) every family's model
//! implements, what a family's `load` returns ([`FamilyModel`]; it starts from a
//! [`crate::config::FamilyConfig`]), the loaded model ([`LoadedModel`]), and what one forward
//! pass records for the gradients' factors ([`Capture`]).

use crate::loader::Selected;
use crate::params::{ParamReplacer, ParamValue, Parameter};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// A causal language model over one sequence (batch 1).
pub trait CausalLm<B: Backend> {
    /// Final hidden states `[tokens, hidden]`, after the final norm; with `capture`, every
    /// measured projection records the factors of its gradient there.
    fn hidden(&self, ids: &[u32], capture: Option<&Capture<B>>) -> Tensor<B, 2>;
    /// Logits `[rows, vocab]` of the given hidden rows (the LM head and any final soft-cap): the
    /// caller asks only for the positions it needs.
    fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2>;
    /// Rows of the embedding matrix: token ids must be below this.
    fn vocab_size(&self) -> usize;
    /// Put new parameter values in (by parameter id; see [`params`]).
    fn replace_params(&mut self, replacer: &mut ParamReplacer<B>);
}

/// A loaded model and its measured parameters, in checkpoint order.
pub struct LoadedModel<B: Backend> {
    pub model: Box<dyn CausalLm<B>>,
    pub selected: Vec<Selected<B>>,
    /// Every parameter, in checkpoint order (a tied head is the embedding's parameter).
    pub params: Vec<Parameter<B>>,
    /// Whether the model was read out of a wrapper checkpoint (a multimodal Gemma 3).
    pub wrapped: bool,
    pub model_type: String,
    pub num_layers: usize,
    pub device: B::Device,
}

impl<B: Backend> LoadedModel<B> {
    /// Give parameters new values: `(index into params, value)`. The model, the measured
    /// handles and `params` all take the new tensors.
    pub fn set_params(&mut self, values: Vec<(usize, ParamValue<B>)>) {
        let mut by_name = std::collections::HashMap::new();
        let mut ids = Vec::with_capacity(values.len());
        for (i, v) in values {
            let p = &mut self.params[i];
            p.value = v.clone();
            ids.push((p.id, v.clone()));
            by_name.insert(p.name.clone(), v);
        }
        for s in &mut self.selected {
            if let Some(ParamValue::Matrix(t)) = by_name.get(&s.name) {
                s.tensor = t.clone();
            }
        }
        self.model.replace_params(&mut ParamReplacer::new(ids));
    }
}

/// What a family's `load` returns: the model and its layer count.
pub type FamilyModel<B> = (Box<dyn CausalLm<B>>, usize);

/// The input and the output probe of one measured projection in one forward pass.
pub struct Captured<B: Backend> {
    pub name: String,
    /// Index into [`Capture::inputs`] of X: `[tokens, in]`.
    pub input: usize,
    /// Zero tensor added to the output; its gradient is Δ: `[tokens, out]`.
    pub probe: Tensor<B, 2>,
}

/// Collects [`Captured`] factors during one forward pass (in load order).
pub struct Capture<B: Backend> {
    pub entries: std::cell::RefCell<Vec<Captured<B>>>,
    /// The distinct inputs X (q, k and v share one).
    pub inputs: std::cell::RefCell<Vec<Tensor<B, 2>>>,
}

impl<B: Backend> Default for Capture<B> {
    fn default() -> Self {
        Self {
            entries: std::cell::RefCell::new(Vec::new()),
            inputs: std::cell::RefCell::new(Vec::new()),
        }
    }
}
