//! A PEFT LoRA adapter folder, as PEFT saves it: `adapter_config.json` (`peft_type` LORA) and
//! `adapter_model.safetensors` with the keys `base_model.model.<module>.lora_A.weight` /
//! `.lora_B.weight` — read ([`read_peft_adapter`]), merged into a loaded model
//! ([`merge_into`], PEFT's `merge_and_unload`), and the configuration a run writes
//! ([`LoraConfig::peft_json`]). Training adapters is `crate::train::lora`.

use crate::load::safetensors::{HostParam, read_safetensors};
use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The adapter files of a PEFT folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// PEFT's default `target_modules` for gradlens: the attention projections.
pub const DEFAULT_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj"];
/// PEFT's default `lora_alpha`.
pub const DEFAULT_ALPHA: f64 = 8.0;

/// A LoRA configuration (PEFT's `LoraConfig` keys that gradlens implements).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub dropout: f64,
    pub rslora: bool,
}

impl LoraConfig {
    /// The scale of the adapters' product: α/r, or α/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether the linear layer of the weight `weight_name` (`…q_proj.weight`) is a target: PEFT's
    /// rule for a list of names (the module's name is the target or ends with `.` + target).
    pub fn targets_weight(&self, weight_name: &str) -> bool {
        let Some(module) = weight_name.strip_suffix(".weight") else {
            return false;
        };
        self.targets
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    /// `adapter_config.json` as PEFT writes it (the keys it needs to load the adapter).
    pub fn peft_json(&self, base_model: &str) -> Value {
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.targets,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.rslora,
        })
    }
}

/// PEFT's saved name of an adapter matrix of a base weight: `base_model.model.<module>.lora_A.weight`.
pub fn peft_key(weight_name: &str, part: Part) -> String {
    format!("base_model.model.{}", stat_name(weight_name, part))
}

/// The name an adapter matrix's statistics go under: `<module>.lora_A.weight`.
pub fn stat_name(weight_name: &str, part: Part) -> String {
    let module = weight_name.strip_suffix(".weight").unwrap_or(weight_name);
    format!("{module}.{}.weight", part.name())
}

/// One of an adapter's two matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    A,
    B,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::A => "lora_A",
            Part::B => "lora_B",
        }
    }
}

/// An adapter read from a PEFT folder: its configuration and, per base weight name, `A` and `B`.
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub config: LoraConfig,
    pub weights: BTreeMap<String, (HostParam, HostParam)>,
}

/// Keys of adapter_config.json gradlens reads or that only describe the adapter's making.
const READ_KEYS: &[&str] = &[
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "use_rslora",
    "peft_type",
    "task_type",
    "bias",
    // Descriptions: where it came from, how PEFT initialised it (the weights are read), versions.
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "init_lora_weights",
    "auto_mapping",
    "peft_version",
    "megatron_core",
    "qalora_group_size",
    "runtime_config",
];

/// Whether a key's value is PEFT's "not used" (null, false, an empty list or map).
fn unused(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Read a PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors` in f32,
/// f64 or bf16). A key gradlens does not implement (DoRA, bias training,
/// `layers_to_transform`, …) set to anything but its unused value is an error naming it.
pub fn read_peft_adapter(dir: &Path) -> Result<PeftAdapter> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read (a PEFT adapter folder?)", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let obj = v
        .as_object()
        .with_context(|| format!("{}: expected a JSON object", path.display()))?;
    let shown = path.display();
    for (k, val) in obj {
        if !READ_KEYS.contains(&k.as_str()) && !unused(val) {
            bail!(
                "{shown}: {k} = {val}: gradlens does not implement this LoRA option (it \
                 implements r, lora_alpha, lora_dropout 0, target_modules as a list, use_rslora, \
                 bias \"none\")"
            );
        }
    }
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => bail!("{shown}: peft_type {other:?}: expected \"LORA\""),
    }
    if let Some(t) = get("task_type")
        && t.as_str() != Some("CAUSAL_LM")
    {
        bail!("{shown}: task_type {t}: expected \"CAUSAL_LM\"");
    }
    if let Some(b) = get("bias")
        && b.as_str() != Some("none")
    {
        bail!("{shown}: bias = {b}: gradlens trains no biases (expected \"none\")");
    }
    let r = get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r >= 1)
        .with_context(|| format!("{shown}: r: expected a whole number ≥ 1"))? as usize;
    let alpha = match get("lora_alpha") {
        None => DEFAULT_ALPHA,
        Some(a) => a
            .as_f64()
            .filter(|a| a.is_finite())
            .with_context(|| format!("{shown}: lora_alpha = {a}: expected a number"))?,
    };
    let dropout = match get("lora_dropout") {
        None => 0.0,
        Some(d) => d
            .as_f64()
            .with_context(|| format!("{shown}: lora_dropout = {d}: expected a number"))?,
    };
    let targets = match get("target_modules") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{shown}: target_modules: expected a list of names"))?,
        Some(Value::String(s)) => bail!(
            "{shown}: target_modules = {s:?}: a regular expression (or \"all-linear\") is not \
             implemented; list the module names"
        ),
        _ => bail!("{shown}: target_modules: expected a list of module names"),
    };
    let rslora = get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let mut targets = targets;
    targets.sort();
    targets.dedup();
    let config = LoraConfig {
        r,
        alpha,
        targets,
        dropout,
        rslora,
    };
    let wpath = dir.join(WEIGHTS_FILE);
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for t in read_safetensors(&wpath)? {
        let Some(rest) = t.name.strip_prefix("base_model.model.") else {
            bail!(
                "{}: tensor {}: expected PEFT's names (base_model.model.<module>.lora_A.weight)",
                wpath.display(),
                t.name
            );
        };
        let (module, part) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, &mut a)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, &mut b)
        } else {
            bail!(
                "{}: tensor {}: not a LoRA matrix (lora_A / lora_B); gradlens implements \
                 adapters of linear layers only",
                wpath.display(),
                t.name
            );
        };
        part.insert(format!("{module}.weight"), t);
    }
    let mut weights = BTreeMap::new();
    for (name, ta) in a {
        let tb = b.remove(&name).with_context(|| {
            format!(
                "{}: {} has no {}",
                wpath.display(),
                peft_key(&name, Part::A),
                peft_key(&name, Part::B)
            )
        })?;
        if ta.dims.len() != 2 || ta.dims[0] != r || tb.dims.len() != 2 || tb.dims[1] != r {
            bail!(
                "{}: {}: lora_A {:?} and lora_B {:?} do not have rank r = {r} of {shown}",
                wpath.display(),
                name,
                ta.dims,
                tb.dims
            );
        }
        weights.insert(name, (ta, tb));
    }
    if let Some(name) = b.keys().next() {
        bail!(
            "{}: {} has no {}",
            wpath.display(),
            peft_key(name, Part::B),
            peft_key(name, Part::A)
        );
    }
    if weights.is_empty() {
        bail!("{}: holds no LoRA matrices", wpath.display());
    }
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        config,
        weights,
    })
}

/// Merge `adapter` into a loaded model (PEFT's `merge_and_unload`): each adapted weight becomes
/// `W + s · B A`; measured weights keep requiring grad.
pub fn merge_into<B: crate::backend::GradBackend>(
    model: &mut gradlens_models::LoadedModel<B>,
    adapter: &PeftAdapter,
) -> Result<()> {
    let file = adapter.dir.join(WEIGHTS_FILE);
    let scale = adapter.config.scale();
    let device = model.device.clone();
    let mut new = Vec::new();
    for (name, (a, b)) in &adapter.weights {
        let Some(pi) = model.params.iter().position(|p| &p.name == name) else {
            bail!(
                "{}: an adapter for {name}, a weight the model does not have",
                file.display()
            );
        };
        let p = &model.params[pi];
        let dims = p.value.dims();
        if dims.len() != 2 || a.dims[1] != dims[1] || b.dims[0] != dims[0] {
            bail!(
                "{}: {name}: lora_A {:?} and lora_B {:?} do not fit the weight's shape {dims:?}",
                file.display(),
                a.dims,
                b.dims
            );
        }
        let matrix = |t: &HostParam| -> Tensor<B::InnerBackend, 2> {
            let [r, c] = [t.dims[0], t.dims[1]];
            gradlens_models::tensor::float_tensor::<B::InnerBackend, 1>(
                burn::tensor::TensorData::new(t.values.clone(), [r * c]),
                &device,
            )
            .reshape([r, c])
        };
        let base = match &p.value {
            gradlens_models::ParamValue::Matrix(t) => t.clone(),
            gradlens_models::ParamValue::Vector(_) => unreachable!("two dimensions"),
        };
        let requires = base.is_require_grad();
        let merged = base
            .inner()
            .add(matrix(b).matmul(matrix(a)).mul_scalar(scale))
            .reshape([dims[0] * dims[1]]);
        new.push((
            pi,
            gradlens_models::ParamValue::<B>::leaf(merged, &dims, requires),
        ));
    }
    model.set_params(new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_peft() {
        let w = "model.layers.3.self_attn.q_proj.weight";
        assert_eq!(
            peft_key(w, Part::A),
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            stat_name(w, Part::B),
            "model.layers.3.self_attn.q_proj.lora_B.weight"
        );
        let c = LoraConfig {
            r: 4,
            alpha: 8.0,
            targets: vec!["q_proj".into(), "v_proj".into()],
            dropout: 0.0,
            rslora: false,
        };
        assert!(c.targets_weight(w));
        assert!(!c.targets_weight("model.layers.3.self_attn.k_proj.weight"));
        assert!(!c.targets_weight("model.layers.3.self_attn.q_proj.bias"));
        assert!(!c.targets_weight("model.layers.3.self_attn.xq_proj.weight"));
        assert_eq!(c.scale(), 2.0);
        assert_eq!(LoraConfig { rslora: true, ..c }.scale(), 4.0);
    }
}
