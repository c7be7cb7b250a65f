//! Every parameter of a loaded model under its checkpoint name: what training reads gradients
//! from, writes updates to and saves.
//!
//! The loader records each parameter once, as it reads it (a tied LM head shares the embedding's
//! parameter and is not recorded again). An update builds new leaf tensors and puts them into the
//! model through Burn's [`ModuleMapper`], by [`ParamId`]: every use of a parameter (both ends of
//! tied embeddings) gets the same new tensor, so its gradients keep adding up in one place.

use burn::module::{ModuleMapper, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use gradlens_core::StoredDtype;
use std::collections::HashMap;

/// A parameter's value: a matrix (weights, embeddings) or a vector (norm scales, biases).
#[derive(Clone, Debug)]
pub enum ParamValue<B: Backend> {
    Vector(Tensor<B, 1>),
    Matrix(Tensor<B, 2>),
}

impl<B: Backend> ParamValue<B> {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            ParamValue::Vector(t) => t.dims().to_vec(),
            ParamValue::Matrix(t) => t.dims().to_vec(),
        }
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// The value as one flat vector.
    pub fn flat(&self) -> Tensor<B, 1> {
        match self {
            ParamValue::Vector(t) => t.clone(),
            ParamValue::Matrix(t) => t.clone().reshape([self.numel()]),
        }
    }

    fn primitive(&self) -> burn::tensor::TensorPrimitive<B> {
        match self {
            ParamValue::Vector(t) => t.clone().into_primitive(),
            ParamValue::Matrix(t) => t.clone().into_primitive(),
        }
    }
}

impl<B: AutodiffBackend> ParamValue<B> {
    /// This parameter's gradient, flat, when the backward pass reached it.
    pub fn grad_flat(&self, grads: &B::Gradients) -> Option<Tensor<B::InnerBackend, 1>> {
        match self {
            ParamValue::Vector(t) => t.grad(grads),
            ParamValue::Matrix(t) => t.grad(grads).map(|g| {
                let n: usize = g.dims().iter().product();
                g.reshape([n])
            }),
        }
    }

    /// The value without its autodiff graph, flat.
    pub fn inner_flat(&self) -> Tensor<B::InnerBackend, 1> {
        self.flat().inner()
    }

    /// A new leaf of `dims` from a flat value on the inner backend; it requires grad when
    /// `trained`.
    pub fn leaf(flat: Tensor<B::InnerBackend, 1>, dims: &[usize], trained: bool) -> Self {
        fn grad_if<B: AutodiffBackend, const D: usize>(t: Tensor<B, D>, on: bool) -> Tensor<B, D> {
            if on { t.require_grad() } else { t }
        }
        match *dims {
            [_] => ParamValue::Vector(grad_if(Tensor::from_inner(flat), trained)),
            [r, c] => {
                ParamValue::Matrix(grad_if(Tensor::from_inner(flat.reshape([r, c])), trained))
            }
            _ => unreachable!("parameters have one or two dimensions"),
        }
    }
}

/// One parameter of a loaded model.
#[derive(Clone, Debug)]
pub struct Parameter<B: Backend> {
    /// The checkpoint's own name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    pub id: ParamId,
    pub value: ParamValue<B>,
    /// Whether training updates it (it then requires grad).
    pub trained: bool,
    /// The dtype the checkpoint stores it in (checkpoints are saved back in it by default).
    pub stored: StoredDtype,
}

/// Puts new values into a model by parameter id (see the module documentation).
pub struct ParamReplacer<B: Backend> {
    values: HashMap<ParamId, ParamValue<B>>,
}

impl<B: Backend> ParamReplacer<B> {
    pub fn new(values: impl IntoIterator<Item = (ParamId, ParamValue<B>)>) -> Self {
        Self {
            values: values.into_iter().collect(),
        }
    }
}

impl<B: Backend> ModuleMapper<B> for ParamReplacer<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.values.get(&id) {
            Some(v) => {
                debug_assert_eq!(v.dims(), tensor.dims().to_vec());
                Tensor::from_primitive(v.primitive())
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}
