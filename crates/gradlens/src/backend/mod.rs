//! The backends gradlens runs on, and the compute dtype.

pub mod step_kernels;

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

/// Burn's Flex CPU backend (gemm-based matmuls, SIMD) with autodiff, in f32.
pub type FlexF32 = burn::backend::Autodiff<burn::backend::Flex>;

/// Burn's LibTorch backend (PyTorch's own CPU kernels through `tch`; `tch` feature) with
/// autodiff, in f32.
#[cfg(feature = "tch")]
pub type TorchF32 = burn::backend::Autodiff<burn::backend::LibTorch<f32>>;
/// Burn's LibTorch backend with autodiff, in f64.
#[cfg(feature = "tch")]
pub type TorchF64 = burn::backend::Autodiff<burn::backend::LibTorch<f64>>;

/// The CUDA backend with autodiff, in f32 (burn-cuda with kernel fusion; `cuda` feature).
#[cfg(feature = "cuda")]
pub type CudaF32 = burn::backend::Autodiff<burn::backend::Cuda<f32, i32>>;

/// Where the model runs: `cpu` (Burn's NdArray), `flex` (Burn's Flex CPU backend), `libtorch`
/// (Burn's LibTorch backend on the CPU) or `cuda[:N]` (burn-cuda, GPU N).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Flex,
    Torch,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "flex" => Ok(Device::Flex),
            "libtorch" | "tch" => Ok(Device::Torch),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Device::Cuda(i)),
                _ => Err(format!(
                    "unknown backend {other:?} (expected cpu, flex, libtorch, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Flex => f.write_str("flex"),
            Device::Torch => f.write_str("libtorch"),
            Device::Cuda(0) => f.write_str("cuda"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Device {
    /// The default sequence padding (see `Prepared::padded_ids`): on CUDA every new sequence length
    /// compiles and tunes kernels, so lengths are rounded up to a multiple of 64; none on the CPU.
    pub fn default_pad_to(self) -> usize {
        match self {
            Device::Cpu | Device::Flex | Device::Torch => 1,
            Device::Cuda(_) => 64,
        }
    }
}

/// Whether this build includes the CUDA backend.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");
/// Whether this build includes the LibTorch backend.
pub const TORCH_BUILT: bool = cfg!(feature = "tch");

/// Limit the CPU threads of every backend and of the spectra (rayon's pool, and LibTorch's
/// intra-op pool when built in).
///
/// # Safety
/// Sets an environment variable: call it before any other thread has started.
#[allow(unsafe_code)]
pub unsafe fn limit_cpu_threads(n: usize) {
    if n == 0 {
        return;
    }
    // SAFETY: the caller guarantees no other thread runs yet.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("OMP_NUM_THREADS", n.to_string());
    }
    #[cfg(feature = "tch")]
    tch::set_num_threads(n as i32);
}

/// Keep freed memory for reuse instead of returning it to the kernel (glibc only; no-op elsewhere,
/// and when `GRADLENS_MALLOC=system`).
///
/// A forward and backward pass allocates and frees tensors of tens to hundreds of MB ([heads, T, T]
/// attention scores, [rows, vocab] logits). glibc serves every allocation above 32 MB with a fresh
/// `mmap` and unmaps it on free, so the kernel zeroes every page again on first touch: in a profile
/// of the Qwen2-0.5B shape on LibTorch, 11% of the time went to `clear_page` alone, and the system
/// time of a run was a fifth of its CPU time. With mmap off and a high trim threshold the heap keeps
/// those pages: same peak memory, about half the system time (docs/performance.md has the figures).
/// Call it first thing in `main`, before any allocation of note.
///
/// The same for mimalloc, the binaries' global allocator (every Rust allocation, so every NdArray
/// tensor): by default it returns freed memory to the kernel 10 ms after the free ("purging"), and
/// a forward and backward pass frees and allocates its large tensors faster than that, so every
/// one of them was page-faulted and zeroed again — 38% of an NdArray forward+backward profile on
/// SmolLM2-135M-Instruct (`clear_page_erms`), 7.8 s a sample instead of 9.6 s without it
/// (docs/performance.md, "CPU speed"). Purging is off here unless `MIMALLOC_PURGE_DELAY` is set.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    if std::env::var("GRADLENS_MALLOC").is_ok_and(|v| v == "system") {
        return;
    }
    /// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h` (the crate names no constant for it).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options (an atomic store); -1 means "never purge".
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters; it is thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// What gradlens runs a model on: an autodiff backend whose models have the fused softmax nodes
/// (`gradlens_models::ops`). Every backend [`dispatch`] picks is one.
/// Its inner backend has the training step's kernels ([`step_kernels::StepKernels`]).
pub trait GradBackend:
    burn::tensor::backend::AutodiffBackend<InnerBackend: step_kernels::StepKernels>
    + gradlens_models::ModelBackend
{
}
impl<B> GradBackend for B where
    B: burn::tensor::backend::AutodiffBackend<InnerBackend: step_kernels::StepKernels>
        + gradlens_models::ModelBackend
{
}

/// Work generic over the autodiff backend, run by [`dispatch`] on the chosen device and dtype.
pub trait BackendJob {
    type Output;
    fn run<B: GradBackend>(self, device: &B::Device) -> anyhow::Result<Self::Output>;
}

/// Check that `device` with `dtype` is available in this build and on this machine, with a clear
/// error otherwise.
pub fn check(device: Device, dtype: Dtype) -> anyhow::Result<()> {
    check_build(device, dtype)?;
    match device {
        Device::Cpu | Device::Flex | Device::Torch => Ok(()),
        Device::Cuda(i) => cuda_available(i),
    }
}

/// Check that this build can run `device` with `dtype` (no look at the machine: a sweep can be
/// planned on a machine without the GPU it will run on).
pub fn check_build(device: Device, dtype: Dtype) -> anyhow::Result<()> {
    match (device, dtype) {
        (Device::Cpu, _) => Ok(()),
        (Device::Flex, Dtype::F32) => Ok(()),
        (Device::Flex, Dtype::F64) => anyhow::bail!(
            "backend flex: f32 only (Burn 0.21's Flex backend computes in f32); use --backend cpu \
             or libtorch for f64"
        ),
        (Device::Torch, _) if !TORCH_BUILT => anyhow::bail!(
            "backend libtorch: this gradlens was built without the LibTorch backend; rebuild with \
             `LIBTORCH_USE_PYTORCH=1 cargo build --release --features tch` in a Python environment \
             with torch 2.9.0 (see docs/performance.md)"
        ),
        (Device::Torch, _) => Ok(()),
        (Device::Cuda(_), _) if !CUDA_BUILT => anyhow::bail!(
            "backend {device}: this gradlens was built without CUDA support; rebuild with \
             `cargo build --release --features cuda` (needs no CUDA toolkit to build; running \
             needs an NVIDIA driver with CUDA 13.0 or newer)"
        ),
        // burn-cuda 0.21 has no f64 matrix product (cubek-matmul: "Types … F64 not supported"),
        // and its kernel fusion no f64 at all: checked on an H100.
        (Device::Cuda(_), Dtype::F64) => anyhow::bail!(
            "backend {device}: f64 runs on the CPU only (burn-cuda 0.21 has no f64 matrix product); \
             use --dtype f32 on CUDA, or --backend cpu for the float64 reference path"
        ),
        (Device::Cuda(_), Dtype::F32) => Ok(()),
    }
}

/// A clear error (not a panic deep in the driver bindings) when no usable GPU is there.
#[cfg(feature = "cuda")]
fn cuda_available(index: usize) -> anyhow::Result<()> {
    // SAFETY: only tries to dlopen the driver library (libcuda); no CUDA call is made.
    #[allow(unsafe_code)]
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        anyhow::bail!(
            "backend cuda: the NVIDIA driver library (libcuda.so) was not found: no GPU driver on \
             this machine, or it is outside the library path (LD_LIBRARY_PATH)"
        );
    }
    cudarc::driver::result::init()
        .map_err(|e| anyhow::anyhow!("backend cuda: the CUDA driver failed to start: {e:?}"))?;
    let n = cudarc::driver::result::device::get_count()
        .map_err(|e| anyhow::anyhow!("backend cuda: cannot count GPUs: {e:?}"))?;
    if index >= n.max(0) as usize {
        anyhow::bail!("backend cuda:{index}: this machine has {n} GPU(s)");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda_available(_: usize) -> anyhow::Result<()> {
    Ok(())
}

/// Run `job` on `device` in `dtype`.
pub fn dispatch<J: BackendJob>(device: Device, dtype: Dtype, job: J) -> anyhow::Result<J::Output> {
    check(device, dtype)?;
    match (device, dtype) {
        (Device::Cpu, Dtype::F32) => job.run::<CpuF32>(&Default::default()),
        (Device::Cpu, Dtype::F64) => job.run::<CpuF64>(&Default::default()),
        (Device::Flex, Dtype::F32) => job.run::<FlexF32>(&Default::default()),
        #[cfg(feature = "tch")]
        (Device::Torch, Dtype::F32) => {
            job.run::<TorchF32>(&burn::backend::libtorch::LibTorchDevice::Cpu)
        }
        #[cfg(feature = "tch")]
        (Device::Torch, Dtype::F64) => {
            job.run::<TorchF64>(&burn::backend::libtorch::LibTorchDevice::Cpu)
        }
        #[cfg(feature = "cuda")]
        (Device::Cuda(i), Dtype::F32) => {
            job.run::<CudaF32>(&burn::backend::cuda::CudaDevice::new(i))
        }
        _ => unreachable!("rejected by check()"),
    }
}
