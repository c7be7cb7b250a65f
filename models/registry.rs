//! The families by `model_type`, and loading a checkpoint through its family: the registry
//! table at the bottom is one line per family (its folder is declared in lib.rs).

use crate::config::FamilyConfig;
use crate::family::{FamilyModel, LoadedModel};
use crate::gguf::{GgufNames, Imported};
use crate::loader::{Loader, Selector, TrainSelector};
use crate::ops::ModelBackend;
use crate::{config, gemma3};
use gradlens_core::gguf::GgufError;
use gradlens_core::{Checkpoint, CheckpointError, Result};
use std::path::Path;

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

/// Import the GGUF file `gguf` into the checkpoint directory `out` as its family declares
/// (`general.architecture`, and `general.name` for files llama.cpp writes as another family's).
pub fn import_gguf(gguf: &Path, out: &Path) -> std::result::Result<Imported, GgufError> {
    gradlens_core::gguf::import::import(gguf, out, &gguf_families())
}

/// `model_type` → family folder (declared in lib.rs): one line per family.
macro_rules! registry {
    ($($model_type:literal => $family:ident),* $(,)?) => {
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
                    config::common(config_path, config, &crate::$family::DEFAULTS).and_then(
                        |(spec, attention)| {
                            crate::$family::load(loader, FamilyConfig {
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

        /// What each family's GGUF files say (the families that import GGUF files).
        pub fn gguf_families() -> Vec<&'static GgufNames> {
            [$(crate::$family::GGUF.as_ref()),*].into_iter().flatten().collect()
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
        assert_eq!(table.len(), super::SUPPORTED.len());
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
