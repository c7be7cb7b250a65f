//! Moves checkpoint tensors into Burn parameters, in the compute dtype of the backend, and records
//! which 2-D parameters take part in the measurement (in checkpoint order).

use crate::tensor::float_tensor;
use burn::module::{Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use gradlens_core::{Checkpoint, Result};

/// Decides whether a 2-D parameter of the given checkpoint name and shape gets a gradient.
pub type Selector = dyn Fn(&str, [usize; 2]) -> bool + Send + Sync;

/// The paper's rule: a 2-D parameter is measured when it is square or its name contains `self_attn`.
pub fn paper_selector(name: &str, shape: [usize; 2]) -> bool {
    shape[0] == shape[1] || name.contains("self_attn")
}

/// A measured parameter: its checkpoint name and a handle to the (grad-requiring) tensor.
pub struct Selected<B: Backend> {
    pub name: String,
    pub tensor: Tensor<B, 2>,
}

pub struct Loader<'a, B: Backend> {
    ckpt: &'a mut Checkpoint,
    device: B::Device,
    selector: &'a Selector,
    selected: Vec<Selected<B>>,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(ckpt: &'a mut Checkpoint, device: &B::Device, selector: &'a Selector) -> Self {
        Self {
            ckpt,
            device: device.clone(),
            selector,
            selected: Vec::new(),
        }
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        self.ckpt
    }

    /// A 2-D weight; requires grad iff the selector picks it.
    pub fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Param<Tensor<B, 2>>> {
        let data = self.ckpt.take(name, &shape)?;
        let tensor = float_tensor::<B, 2>(data, &self.device);
        let tensor = if (self.selector)(name, shape) {
            let t = tensor.require_grad();
            self.selected.push(Selected {
                name: self.ckpt.stored_name(name),
                tensor: t.clone(),
            });
            t
        } else {
            tensor
        };
        Ok(Param::initialized(ParamId::new(), tensor))
    }

    /// Whether the weight of this name was selected for measurement.
    pub fn is_selected(&self, name: &str) -> bool {
        let stored = self.ckpt.stored_name(name);
        self.selected.iter().any(|s| s.name == stored)
    }

    /// The checkpoint's own name of the tensor asked for as `name` (outputs use it).
    pub fn stored_name(&self, name: &str) -> String {
        self.ckpt.stored_name(name)
    }

    /// A 1-D weight (norm scale, bias): never measured, never requires grad.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Param<Tensor<B, 1>>> {
        let data = self.ckpt.take(name, &[len])?;
        let tensor = float_tensor::<B, 1>(data, &self.device);
        Ok(Param::initialized(ParamId::new(), tensor))
    }

    /// A norm's scale vector, `identity` being the value that leaves its input unchanged (used
    /// by random initialisation, see [`crate::describe`]).
    pub fn norm_scale(
        &mut self,
        name: &str,
        len: usize,
        identity: f64,
    ) -> Result<Param<Tensor<B, 1>>> {
        let p = self.vector(name, len)?;
        self.ckpt.note_identity(name, identity);
        Ok(p)
    }

    /// Whether the checkpoint stores a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(name)
    }

    /// Accept a tensor the model does not use (e.g. a stored copy of a tied head).
    pub fn ignore(&mut self, name: &str) {
        let stored = self.ckpt.stored_name(name);
        self.ckpt.ignore_where(|n| n == stored);
    }

    /// Accept every tensor whose name satisfies `pred` (e.g. old checkpoints' `rotary_emb.inv_freq`).
    pub fn ignore_where(&mut self, pred: impl Fn(&str) -> bool) {
        self.ckpt.ignore_where(pred);
    }

    /// Check that every tensor was used, and hand over the measured parameters.
    pub fn finish(self) -> Result<Vec<Selected<B>>> {
        self.ckpt.finish()?;
        Ok(self.selected)
    }
}
