//! Moves checkpoint tensors into Burn parameters, in the compute dtype of the backend, and records
//! which 2-D parameters take part in the measurement (in checkpoint order).

use crate::params::{ParamValue, Parameter};
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

/// Decides whether a parameter (any number of dimensions) of the given checkpoint name and shape
/// is trained.
pub type TrainSelector = dyn Fn(&str, &[usize]) -> bool + Send + Sync;

/// What a finished load hands over: the measured parameters and every parameter.
pub type Finished<B> = (Vec<Selected<B>>, Vec<Parameter<B>>);

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
    trains: Option<&'a TrainSelector>,
    params: Vec<Parameter<B>>,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(ckpt: &'a mut Checkpoint, device: &B::Device, selector: &'a Selector) -> Self {
        Self {
            ckpt,
            device: device.clone(),
            selector,
            selected: Vec::new(),
            trains: None,
            params: Vec::new(),
        }
    }

    /// Also make the parameters that `trains` picks require gradients (for training).
    pub fn with_training(mut self, trains: &'a TrainSelector) -> Self {
        self.trains = Some(trains);
        self
    }

    fn trained(&self, name: &str, shape: &[usize]) -> bool {
        self.trains.is_some_and(|t| t(name, shape))
    }

    fn record(&mut self, name: &str, id: ParamId, value: ParamValue<B>, trained: bool) {
        let stored = self
            .ckpt
            .stored_dtype_of(name)
            .unwrap_or(gradlens_core::StoredDtype::F32);
        self.params.push(Parameter {
            name: self.ckpt.stored_name(name),
            id,
            value,
            trained,
            stored,
        });
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
        let measured = (self.selector)(name, shape);
        let trained = self.trained(name, &shape);
        let tensor = if measured || trained {
            tensor.require_grad()
        } else {
            tensor
        };
        if measured {
            self.selected.push(Selected {
                name: self.ckpt.stored_name(name),
                tensor: tensor.clone(),
            });
        }
        let id = ParamId::new();
        self.record(name, id, ParamValue::Matrix(tensor.clone()), trained);
        Ok(Param::initialized(id, tensor))
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

    /// A 1-D weight (norm scale, bias): never measured; requires grad only when trained.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Param<Tensor<B, 1>>> {
        let data = self.ckpt.take(name, &[len])?;
        let tensor = float_tensor::<B, 1>(data, &self.device);
        let trained = self.trained(name, &[len]);
        let tensor = if trained {
            tensor.require_grad()
        } else {
            tensor
        };
        let id = ParamId::new();
        self.record(name, id, ParamValue::Vector(tensor.clone()), trained);
        Ok(Param::initialized(id, tensor))
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

    /// Check that every tensor was used, and hand over the measured parameters and every
    /// parameter.
    pub fn finish(self) -> Result<Finished<B>> {
        self.ckpt.finish()?;
        Ok((self.selected, self.params))
    }
}
