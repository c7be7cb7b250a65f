//! LoRA as PEFT has it (`LoraConfig`, `peft_type` LORA): a target linear layer computes
//! `y = W x + s · B (A x)` with `A` of shape `[r, in]`, `B` of shape `[out, r]` and `s = α / r`
//! (`α / √r` with `use_rslora`). Only `A` and `B` are trained.
//!
//! gradlens runs the model with the merged weight `W' = W + s · B A` (the same function of `x`
//! while dropout is 0) and takes the gradient `G = ∂L/∂W'` the paper measures; the adapters'
//! gradients follow exactly by the chain rule: `∂L/∂A = s · Bᵀ G` and `∂L/∂B = s · G Aᵀ`. After
//! each update `W'` is formed again from the frozen `W`.
//!
//! Files are PEFT's ([`crate::load::adapter`]: `adapter_config.json` and
//! `adapter_model.safetensors` with the keys `base_model.model.<module>.lora_A.weight` /
//! `.lora_B.weight`, which `PeftModel.from_pretrained(base, dir)` loads as they are).

use crate::load::adapter::{
    CONFIG_FILE, DEFAULT_ALPHA, DEFAULT_TARGETS, LoraConfig, PeftAdapter, read_peft_adapter,
};
use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use std::path::PathBuf;

/// The LoRA options as given on the command line (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct LoraArgs {
    /// `--lora R`.
    pub r: Option<usize>,
    pub alpha: Option<f64>,
    pub targets: Option<Vec<String>>,
    pub dropout: Option<f64>,
    /// `--use-rslora`: scale α/√r.
    pub rslora: bool,
    /// `--lora-init DIR`: start from a PEFT adapter.
    pub init: Option<PathBuf>,
}

/// The run's LoRA configuration from the command line and, with `--lora-init`, the adapter's own
/// (a flag that disagrees with it is an error naming both values).
pub fn resolve(args: &LoraArgs) -> Result<(LoraConfig, Option<PeftAdapter>)> {
    if let Some(d) = args.dropout
        && !(d.is_finite() && (0.0..1.0).contains(&d))
    {
        bail!("--lora-dropout {d}: expected 0 ≤ p < 1");
    }
    let targets = args.targets.clone().map(|mut t| {
        t.sort();
        t.dedup();
        t
    });
    let (config, adapter) = match &args.init {
        Some(dir) => {
            let adapter = read_peft_adapter(dir)?;
            let c = &adapter.config;
            let file = dir.join(CONFIG_FILE);
            let disagree = |flag: &str, given: String, key: &str, there: String| {
                anyhow::anyhow!(
                    "{flag} {given} disagrees with {key} = {there} in {}: leave the flag out or \
                     give the adapter's value",
                    file.display()
                )
            };
            if let Some(r) = args.r
                && r != c.r
            {
                return Err(disagree("--lora", r.to_string(), "r", c.r.to_string()));
            }
            if let Some(a) = args.alpha
                && a != c.alpha
            {
                return Err(disagree(
                    "--lora-alpha",
                    a.to_string(),
                    "lora_alpha",
                    c.alpha.to_string(),
                ));
            }
            if let Some(t) = &targets
                && *t != c.targets
            {
                return Err(disagree(
                    "--lora-targets",
                    t.join(","),
                    "target_modules",
                    c.targets.join(","),
                ));
            }
            if let Some(d) = args.dropout
                && d != c.dropout
            {
                return Err(disagree(
                    "--lora-dropout",
                    d.to_string(),
                    "lora_dropout",
                    c.dropout.to_string(),
                ));
            }
            if args.rslora && !c.rslora {
                return Err(disagree(
                    "--use-rslora",
                    "(given)".into(),
                    "use_rslora",
                    "false".into(),
                ));
            }
            (c.clone(), Some(adapter))
        }
        None => {
            let r = args
                .r
                .context("LoRA needs a rank: --lora R (or --lora-init DIR)")?;
            (
                LoraConfig {
                    r,
                    alpha: args.alpha.unwrap_or(DEFAULT_ALPHA),
                    targets: targets
                        .unwrap_or_else(|| DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()),
                    dropout: args.dropout.unwrap_or(0.0),
                    rslora: args.rslora,
                },
                None,
            )
        }
    };
    if config.r == 0 {
        bail!("--lora 0: expected a rank ≥ 1");
    }
    if !config.alpha.is_finite() {
        bail!("--lora-alpha {}: expected a finite number", config.alpha);
    }
    if config.dropout != 0.0 {
        bail!(
            "--lora-dropout {} (lora_dropout): LoRA dropout is not implemented in gradlens yet \
             (it runs the merged weight, exact only without dropout); use 0",
            config.dropout
        );
    }
    Ok((config, adapter))
}

/// PEFT's initialisation of `A` (`kaiming_uniform_(a=√5)`: uniform in ±1/√in) from `seed`, the
/// weight's position `salt` making each adapter's draw its own (SplitMix64).
pub fn init_a(rows: usize, cols: usize, seed: u64, salt: u64) -> Vec<f64> {
    let bound = 1.0 / (cols as f64).sqrt();
    let mut state = seed ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..rows * cols)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 / (1u64 << 53) as f64;
            bound * (2.0 * u - 1.0)
        })
        .collect()
}

/// One adapter on the inner (non-autodiff) backend: the frozen base weight and `A`, `B`.
pub struct Adapter<B: Backend> {
    /// The base weight's checkpoint name.
    pub name: String,
    /// Its index in the model's parameters.
    pub param: usize,
    pub base: Tensor<B, 2>,
    pub a: Tensor<B, 2>,
    pub b: Tensor<B, 2>,
}

impl<B: Backend> Adapter<B> {
    /// `W + s · B A`.
    pub fn merged(&self, scale: f64) -> Tensor<B, 2> {
        self.base
            .clone()
            .add(self.b.clone().matmul(self.a.clone()).mul_scalar(scale))
    }

    /// `(∂L/∂A, ∂L/∂B) = (s · Bᵀ G, s · G Aᵀ)` from `G = ∂L/∂W'`.
    pub fn grads(&self, g: Tensor<B, 2>, scale: f64) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (
            self.b
                .clone()
                .transpose()
                .matmul(g.clone())
                .mul_scalar(scale),
            g.matmul(self.a.clone().transpose()).mul_scalar(scale),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_uniform_within_kaimings_bound_and_seeded() {
        let a = init_a(4, 64, 7, 0);
        assert!(a.iter().all(|x| x.abs() <= 1.0 / 8.0));
        assert!(a.iter().any(|x| x.abs() > 0.1));
        assert_eq!(a, init_a(4, 64, 7, 0));
        assert_ne!(a, init_a(4, 64, 7, 1));
        assert_ne!(a, init_a(4, 64, 8, 0));
    }
}
