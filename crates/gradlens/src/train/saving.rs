//! A training run's checkpoints: writing one (the model, or with LoRA the PEFT adapter folder,
//! with the training state when asked) and taking the trained values and AdamW's state back from
//! one on `--resume`.

use super::checkpoint::{
    self, CheckpointContent, SaveDtype, TrainerState, save_dtype_of, write_checkpoint,
};
use super::{Lora, Trainer};
use crate::backend::{Dtype, GradBackend};
use crate::load::adapter::{CONFIG_FILE, Part, WEIGHTS_FILE, peft_key};
use crate::load::safetensors::{HostParam, read_safetensors};
use crate::measure::backward::HostReal;
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use gradlens_core::StoredDtype;
use gradlens_models::tensor::float_tensor;
use std::collections::HashMap;
use std::path::Path;

impl<B: GradBackend, T: HostReal> Trainer<'_, B, T> {
    fn host_values(t: Tensor<impl Backend, 1>) -> Vec<f64> {
        t.into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .expect("f64 data")
    }

    /// Write a checkpoint directory (with the training state when `state`): the model, or with
    /// LoRA the PEFT adapter folder.
    pub(super) fn save(&self, dir: &Path, step: usize, total: usize, state: bool) -> Result<()> {
        match &self.lora {
            Some(l) => self.save_adapter(l, dir, step, total, state),
            None => self.save_model(dir, step, total, state),
        }
    }

    fn compute_dtype(&self) -> StoredDtype {
        match self.opts.run.dtype {
            Dtype::F32 => StoredDtype::F32,
            Dtype::F64 => StoredDtype::F64,
        }
    }

    fn trainer_state(step: usize, total: usize) -> TrainerState {
        TrainerState {
            step,
            total_steps: total,
            gradlens: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// A PEFT adapter folder (adapter_config.json, adapter_model.safetensors in the compute
    /// dtype or --save-dtype) and, with `state`, the adapters and their AdamW moments exactly.
    fn save_adapter(
        &self,
        l: &Lora<B::InnerBackend>,
        dir: &Path,
        step: usize,
        total: usize,
        state: bool,
    ) -> Result<()> {
        let compute = self.compute_dtype();
        let saved = self.opts.save_dtype.map_or(compute, SaveDtype::stored);
        let mut weights = Vec::new();
        let mut tensors = Vec::new();
        let mut k = 0;
        for a in &l.adapters {
            for (part, t) in [(Part::A, &a.a), (Part::B, &a.b)] {
                let key = peft_key(&a.name, part);
                let dims = t.dims().to_vec();
                let [r, c] = t.dims();
                let values = Self::host_values(t.clone().reshape([r * c]));
                if state {
                    let m = &self.optimizer.moments[k];
                    tensors.push(HostParam {
                        name: format!("param.{key}"),
                        dims: vec![r * c],
                        values: values.clone(),
                        dtype: compute,
                    });
                    for (prefix, t) in [
                        ("exp_avg", m.exp_avg.clone()),
                        ("exp_avg_sq", m.exp_avg_sq.clone()),
                    ] {
                        tensors.push(HostParam {
                            name: format!("{prefix}.{key}"),
                            dims: vec![r * c],
                            values: Self::host_values(t),
                            dtype: compute,
                        });
                    }
                }
                weights.push(HostParam {
                    name: key,
                    dims,
                    values,
                    dtype: saved,
                });
                k += 1;
            }
        }
        weights.sort_by(|a, b| a.name.cmp(&b.name));
        let config = l
            .config
            .peft_json(&self.opts.run.model.display().to_string());
        checkpoint::write_folder(dir, |partial| {
            crate::sink::output::write_atomically(
                &partial.join(CONFIG_FILE),
                (serde_json::to_string_pretty(&config)? + "\n").as_bytes(),
            )?;
            crate::load::safetensors::write_safetensors(&partial.join(WEIGHTS_FILE), &weights)?;
            checkpoint::write_training_state(partial, &tensors, &Self::trainer_state(step, total))
        })
        .with_context(|| format!("saving {}", dir.display()))
    }

    /// Write the model as a Hugging Face checkpoint directory (with the training state when
    /// `state`).
    pub(super) fn save_model(
        &self,
        dir: &Path,
        step: usize,
        total: usize,
        state: bool,
    ) -> Result<()> {
        let opts = self.opts;
        let weights = self
            .model
            .params
            .iter()
            .map(|p| HostParam {
                name: p.name.clone(),
                dims: p.value.dims(),
                values: Self::host_values(p.value.inner_flat()),
                dtype: save_dtype_of(p.stored, opts.save_dtype),
            })
            .collect();
        let compute = self.compute_dtype();
        let mut tensors = Vec::new();
        if state {
            for (k, &pi) in self.trained.iter().enumerate() {
                let p = &self.model.params[pi];
                let m = &self.optimizer.moments[k];
                for (prefix, t) in [
                    ("param", p.value.inner_flat()),
                    ("exp_avg", m.exp_avg.clone()),
                    ("exp_avg_sq", m.exp_avg_sq.clone()),
                ] {
                    tensors.push(HostParam {
                        name: format!("{prefix}.{}", p.name),
                        dims: vec![p.value.numel()],
                        values: Self::host_values(t),
                        dtype: compute,
                    });
                }
            }
        }
        let trainer_state = Self::trainer_state(step, total);
        write_checkpoint(
            dir,
            CheckpointContent {
                source: &opts.run.model,
                weights,
                state: Some((tensors, trainer_state)),
                config_dtype: opts.save_dtype,
            },
        )
        .with_context(|| format!("saving {}", dir.display()))
    }

    /// Take the trained parameters and AdamW's state from a checkpoint's training state.
    pub(super) fn restore(&mut self, dir: &Path) -> Result<()> {
        let state_path = dir.join("training_state.safetensors");
        let tensors: HashMap<String, Vec<f64>> = read_safetensors(&state_path)?
            .into_iter()
            .map(|t| (t.name, t.values))
            .collect();
        let trainer_state = checkpoint::read_trainer_state(dir)?;
        let device = self.model.device.clone();
        // The optimizer's parameters by name and size: the trained parameters, or LoRA's A, B.
        let optimized: Vec<(String, usize)> = match &self.lora {
            Some(l) => l
                .adapters
                .iter()
                .flat_map(|a| {
                    [(Part::A, &a.a), (Part::B, &a.b)].map(|(part, t)| {
                        let [r, c] = t.dims();
                        (peft_key(&a.name, part), r * c)
                    })
                })
                .collect(),
            None => self
                .trained
                .iter()
                .map(|&pi| {
                    let p = &self.model.params[pi];
                    (p.name.clone(), p.value.numel())
                })
                .collect(),
        };
        let mut values = Vec::with_capacity(optimized.len());
        for (k, (pname, n)) in optimized.iter().enumerate() {
            let n = *n;
            let get = |prefix: &str| -> Result<Tensor<B::InnerBackend, 1>> {
                let name = format!("{prefix}.{pname}");
                let v = tensors
                    .get(&name)
                    .with_context(|| format!("{}: no tensor {name}", state_path.display()))?;
                anyhow::ensure!(
                    v.len() == n,
                    "{}: tensor {name} has {} values, the parameter {n}",
                    state_path.display(),
                    v.len()
                );
                Ok(float_tensor::<B::InnerBackend, 1>(
                    TensorData::new(v.clone(), [n]),
                    &device,
                ))
            };
            values.push(get("param")?);
            self.optimizer.moments[k].exp_avg = get("exp_avg")?;
            self.optimizer.moments[k].exp_avg_sq = get("exp_avg_sq")?;
        }
        self.optimizer.steps = trainer_state.step as u64;
        self.set_optimized(values);
        Ok(())
    }
}
