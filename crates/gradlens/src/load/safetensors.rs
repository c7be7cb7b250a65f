//! Host tensors in safetensors files, as f64 values whatever their stored dtype: read (a PEFT
//! adapter, a training state) and written (checkpoints, adapters).

use gradlens_core::StoredDtype;
use safetensors::tensor::TensorView;
use std::path::Path;

/// A tensor to write: its name, shape, and values (f64 holds f32 values exactly).
pub struct HostParam {
    pub name: String,
    pub dims: Vec<usize>,
    pub values: Vec<f64>,
    pub dtype: StoredDtype,
}

fn encode(values: &[f64], dtype: StoredDtype) -> (safetensors::Dtype, Vec<u8>) {
    match dtype {
        StoredDtype::F64 => (
            safetensors::Dtype::F64,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        StoredDtype::F32 => (
            safetensors::Dtype::F32,
            values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        ),
        StoredDtype::BF16 => (
            safetensors::Dtype::BF16,
            values
                .iter()
                .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
                .collect(),
        ),
        StoredDtype::F16 => (
            safetensors::Dtype::F16,
            values
                .iter()
                .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
                .collect(),
        ),
    }
}

/// An I/O error as `path: error`.
pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{}: {e}", path.display())
}

/// Write tensors to one safetensors file (metadata `format: pt`, as transformers writes it).
pub fn write_safetensors(path: &Path, tensors: &[HostParam]) -> anyhow::Result<()> {
    let encoded: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let (dtype, bytes) = encode(&t.values, t.dtype);
            (t.name.clone(), dtype, t.dims.clone(), bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, dtype, dims, bytes)| {
            TensorView::new(*dtype, dims.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    std::fs::write(path, bytes).map_err(io_err(path))
}

/// Read every tensor of a safetensors file as f64 values (f32, f64, bf16, f16), by name.
pub fn read_safetensors(path: &Path) -> anyhow::Result<Vec<HostParam>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let (dtype, values): (StoredDtype, Vec<f64>) = match view.dtype() {
            safetensors::Dtype::F64 => (
                StoredDtype::F64,
                data.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
            ),
            safetensors::Dtype::F32 => (
                StoredDtype::F32,
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
                    .collect(),
            ),
            safetensors::Dtype::BF16 => (
                StoredDtype::BF16,
                data.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes(b.try_into().expect("2 bytes")).to_f64())
                    .collect(),
            ),
            safetensors::Dtype::F16 => (
                StoredDtype::F16,
                data.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f64())
                    .collect(),
            ),
            other => anyhow::bail!(
                "{}: tensor {name}: unsupported dtype {other:?}",
                path.display()
            ),
        };
        out.push(HostParam {
            name,
            dims: view.shape().to_vec(),
            values,
            dtype,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
