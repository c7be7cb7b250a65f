//! The backends gradlens runs on, and the compute dtype.

use std::fmt;
use std::str::FromStr;

/// Compute dtype of the model (weights are cast to it on load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    F64,
}

impl FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f64" | "float64" => Ok(Dtype::F64),
            other => Err(format!("unknown dtype {other:?} (expected f32 or f64)")),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        })
    }
}

/// The CPU backend with autodiff, in f32.
pub type CpuF32 = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
/// The CPU backend with autodiff, in f64 (the reference-grade path).
pub type CpuF64 = burn::backend::Autodiff<burn::backend::NdArray<f64>>;
