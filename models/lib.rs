//! The transformer families gradlens measures, each a readable composition of [`blocks`].
//!
//! A family is one folder (`models/<family>/mod.rs`) with a `load` function that reads its
//! config.json keys and the checkpoint's tensors, and a model type implementing [`CausalLm`].
//! The [`registry!`] at the bottom of this file maps `model_type` to the family: adding an
//! architecture is one folder and one line there (see `models/README.md`).

pub mod blocks;
pub mod config;
mod cpu_attention;
mod cpu_element;
mod cpu_gemm;
mod cpu_loss;
pub mod loader;
pub mod ops;
pub mod params;
pub mod tensor;

pub use loader::{Loader, Selected, Selector, TrainSelector, paper_selector};
pub use ops::ModelBackend;
pub use params::{ParamReplacer, ParamValue, Parameter};

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use gradlens_core::{Checkpoint, CheckpointError, Result};
use std::path::Path;

/// A causal language model over one sequence (batch 1).
pub trait CausalLm<B: Backend> {
    /// Final hidden states `[tokens, hidden]`, after the final norm; with `capture`, every
    /// measured projection records the factors of its gradient there.
    fn hidden(&self, ids: &[u32], capture: Option<&blocks::Capture<B>>) -> Tensor<B, 2>;
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

/// What a family's `load` starts from: its config.json, and the decoder and attention that the
/// keys every family shares already describe ([`config::common`], with the family's `DEFAULTS`).
pub struct FamilyConfig<'a> {
    pub raw: &'a serde_json::Value,
    pub path: &'a Path,
    pub spec: blocks::DecoderSpec,
    pub attention: blocks::AttentionOptions,
}

impl FamilyConfig<'_> {
    /// The family's own keys (its config struct), errors naming the field.
    pub fn own<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        gradlens_core::parse_config(self.path, self.raw)
    }

    /// The rotary table of `rope_theta` (default `default_theta`) and `rope_scaling`.
    pub fn rope_table(&self, default_theta: f64) -> Result<blocks::RopeTable> {
        config::rope_table(self.path, self.raw, default_theta, self.attention.head_dim)
    }

    /// Per layer, whether it slides: `layer_types`, else the family's rule.
    pub fn sliding_layers(&self, rule: impl Fn(usize) -> bool) -> Result<Vec<bool>> {
        config::sliding_layers(self.path, self.raw, self.spec.layers, rule)
    }
}

/// Load a checkpoint directory onto `device` in the compute dtype of `B`; the parameters that
/// `selector` picks require gradients, everything else is frozen.
pub fn load<B: ModelBackend>(
    dir: &Path,
    device: &B::Device,
    selector: &Selector,
) -> Result<LoadedModel<B>> {
    load_with(dir, device, selector, None)
}

/// [`load`] for training: the parameters `trains` picks require gradients too.
pub fn load_for_training<B: ModelBackend>(
    dir: &Path,
    device: &B::Device,
    selector: &Selector,
    trains: &TrainSelector,
) -> Result<LoadedModel<B>> {
    load_with(dir, device, selector, Some(trains))
}

fn load_with<B: ModelBackend>(
    dir: &Path,
    device: &B::Device,
    selector: &Selector,
    trains: Option<&TrainSelector>,
) -> Result<LoadedModel<B>> {
    let mut ckpt = Checkpoint::open(dir)?;
    let model_type = unwrap_text_model(&mut ckpt)?;
    let wrapped = ckpt.is_wrapped();
    let config = ckpt.config().clone();
    let config_path = ckpt.config_path().to_path_buf();
    let mut loader = Loader::new(&mut ckpt, device, selector);
    if let Some(trains) = trains {
        loader = loader.with_training(trains);
    }
    let (model, num_layers) = match dispatch::<B>(&model_type, &mut loader, &config, &config_path) {
        Some(result) => result?,
        None => {
            return Err(CheckpointError::UnsupportedModel {
                path: config_path,
                model_type,
                supported: SUPPORTED.to_vec(),
            });
        }
    };
    let (selected, params) = loader.finish()?;
    Ok(LoadedModel {
        model,
        selected,
        params,
        wrapped,
        model_type,
        num_layers,
        device: device.clone(),
    })
}

/// The `model_type` to load, after reading the text model out of a wrapper checkpoint (a
/// multimodal Gemma 3); the sizes of the config checked first.
fn unwrap_text_model(ckpt: &mut Checkpoint) -> Result<String> {
    if ckpt.model_type()? == gemma3::MULTIMODAL {
        gemma3::text_part(ckpt)?;
    }
    config::check_sizes(ckpt.config_path(), ckpt.config())?;
    Ok(ckpt.model_type()?.to_string())
}

/// The tensors a checkpoint of this config needs, as the family's own `load` asks for them (name,
/// shape, and a norm scale's identity value): the basis of random initialisation. No weights
/// are read or allocated.
pub fn describe(config_path: &Path) -> Result<(String, Vec<gradlens_core::Described>)> {
    type Probe = burn::backend::NdArray<f32>;
    let mut ckpt = Checkpoint::describe(config_path)?;
    let model_type = unwrap_text_model(&mut ckpt)?;
    let config = ckpt.config().clone();
    let never = |_: &str, _: [usize; 2]| false;
    let mut loader = Loader::<Probe>::new(&mut ckpt, &Default::default(), &never);
    match dispatch::<Probe>(&model_type, &mut loader, &config, config_path) {
        Some(result) => {
            result?;
        }
        None => {
            return Err(CheckpointError::UnsupportedModel {
                path: config_path.to_path_buf(),
                model_type,
                supported: SUPPORTED.to_vec(),
            });
        }
    }
    drop(loader);
    let described = ckpt.described().unwrap_or_default().to_vec();
    Ok((model_type, described))
}

/// `model_type` → family folder. Each line declares the family's module and registers it.
macro_rules! registry {
    ($($model_type:literal => $family:ident),* $(,)?) => {
        $(pub mod $family;)*

        /// The `model_type` values gradlens supports.
        pub const SUPPORTED: &[&str] = &[$($model_type),*];

        fn dispatch<B: ModelBackend>(
            model_type: &str,
            loader: &mut Loader<'_, B>,
            config: &serde_json::Value,
            config_path: &Path,
        ) -> Option<Result<FamilyModel<B>>> {
            match model_type {
                $($model_type => Some(
                    config::common(config_path, config, &$family::DEFAULTS).and_then(
                        |(spec, attention)| {
                            $family::load(loader, FamilyConfig {
                                raw: config,
                                path: config_path,
                                spec,
                                attention,
                            })
                        },
                    ),
                ),)*
                _ => None,
            }
        }
    };
}

registry! {
    "qwen2" => qwen2,
    "llama" => llama,
    "mistral" => mistral,
    "gemma" => gemma,
    "gemma2" => gemma2,
    "qwen3" => qwen3,
    "olmo2" => olmo2,
    "gemma3_text" => gemma3,
}

#[cfg(test)]
mod tests {
    use crate::blocks::NormKind;

    /// Each family's defaults for the shared keys, as transformers' `<Family>Config` has them.
    #[test]
    fn family_defaults_are_transformers() {
        use NormKind::{OnePlusWeight as Gemma, Plain};
        let table = [
            (
                "qwen2",
                crate::qwen2::DEFAULTS,
                None,
                None,
                1e-6,
                Plain,
                false,
            ),
            (
                "qwen3",
                crate::qwen3::DEFAULTS,
                None,
                Some(128),
                1e-6,
                Plain,
                false,
            ),
            (
                "llama",
                crate::llama::DEFAULTS,
                None,
                None,
                1e-6,
                Plain,
                false,
            ),
            (
                "mistral",
                crate::mistral::DEFAULTS,
                Some(8),
                None,
                1e-6,
                Plain,
                false,
            ),
            (
                "gemma",
                crate::gemma::DEFAULTS,
                Some(16),
                Some(256),
                1e-6,
                Gemma,
                true,
            ),
            (
                "gemma2",
                crate::gemma2::DEFAULTS,
                Some(4),
                Some(256),
                1e-6,
                Gemma,
                true,
            ),
            (
                "gemma3_text",
                crate::gemma3::DEFAULTS,
                Some(4),
                Some(256),
                1e-6,
                Gemma,
                true,
            ),
            (
                "olmo2",
                crate::olmo2::DEFAULTS,
                None,
                None,
                1e-5,
                Plain,
                false,
            ),
        ];
        assert_eq!(table.len(), crate::SUPPORTED.len());
        for (name, d, kv, head_dim, eps, norm, tied) in table {
            assert_eq!(
                (
                    d.kv_heads,
                    d.head_dim,
                    d.rms_norm_eps,
                    d.norm,
                    d.tie_word_embeddings
                ),
                (kv, head_dim, eps, norm, tied),
                "{name}"
            );
            assert_eq!(d.gelu, name.starts_with("gemma"), "{name}");
        }
    }
}
