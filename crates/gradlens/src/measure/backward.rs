//! One forward and one backward pass of one sample, and the gradients of the measured weights
//! (and, when asked, the low-rank factors of each gradient).

use crate::backend::GradBackend;
use crate::prepare::Prepared;
use crate::spectra::stats::{
    Cores, EntryStats, Factors, HostMatrix, MeasuredGrad, Real, Spectra, SpectrumSource, SvdError,
    spectra_each,
};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, Tensor};
use gradlens_models::LoadedModel;
use gradlens_models::family::Capture;
use gradlens_models::ops::weighted_nll;
use gradlens_models::tensor::{float_tensor, int_tensor, zeros};
use std::collections::HashMap;
use std::sync::Arc;

/// Mean negative log-likelihood of the response tokens; logits are formed only at the positions
/// that carry loss.
/// With `pad_to` > 1 the sequence is padded (see [`Prepared::padded_ids`]); the loss is the same.
pub fn response_loss<B: GradBackend>(
    model: &LoadedModel<B>,
    sample: &Prepared,
    capture: Option<&Capture<B>>,
    pad_to: usize,
) -> Tensor<B, 1> {
    let device = model.device.clone();
    let first = sample.first_loss_position();
    let n = sample.n_loss_tokens();
    let ids = sample.padded_ids(pad_to);
    let hidden = model.model.hidden(&ids, capture);
    // With padding the logits rows are padded too (the number of response tokens varies from
    // sample to sample, and on CUDA every new shape compiles kernels). Rows outside the response
    // get weight 0: they add nothing to the loss and send no gradient back.
    let (start, rows) = loss_rows(first, n, ids.len(), pad_to);
    let in_response = |p: usize| p >= first && p < first + n;
    // −1/n on the response rows (the mean negative log-likelihood), 0 on the others.
    let (coeff, targets): (Vec<f64>, Vec<i64>) = (start..start + rows)
        .map(|p| {
            if in_response(p) {
                (-1.0 / n as f64, sample.ids[p + 1] as i64)
            } else {
                (0.0, 0)
            }
        })
        .unzip();
    let logits = model.model.logits(hidden.narrow(0, start, rows));
    let targets = int_tensor::<B, 2>(targets, [rows, 1], &device);
    let coeff = float_tensor::<B, 2>(burn::tensor::TensorData::new(coeff, [rows, 1]), &device);
    weighted_nll(logits, targets, coeff)
}

/// The logits rows of a padded sequence of `len` positions (a multiple of `pad_to`) whose `n`
/// loss positions start at `first`: `n` rounded up to a multiple of `pad_to`, starting at `first`
/// or earlier when the sequence ends first.
fn loss_rows(first: usize, n: usize, len: usize, pad_to: usize) -> (usize, usize) {
    let pad_to = pad_to.max(1);
    let rows = n.div_ceil(pad_to) * pad_to;
    debug_assert!(rows <= len && first + n < len + 1);
    (first.min(len - rows), rows)
}

/// The gradients of one sample on the host, in the compute dtype.
pub enum HostGrads {
    F32(Vec<MeasuredGrad<f32>>),
    F64(Vec<MeasuredGrad<f64>>),
}

impl HostGrads {
    pub fn len(&self) -> usize {
        match self {
            HostGrads::F32(g) => g.len(),
            HostGrads::F64(g) => g.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Names and entry statistics, in order.
    pub fn entries(&self) -> Vec<(String, EntryStats)> {
        match self {
            HostGrads::F32(g) => g.iter().map(|g| (g.name.clone(), g.entries)).collect(),
            HostGrads::F64(g) => g.iter().map(|g| (g.name.clone(), g.entries)).collect(),
        }
    }
    /// Singular values of every gradient, in order, one result per weight (see
    /// [`spectra_each`]).
    pub fn spectra_each(&self) -> Vec<Result<Vec<f64>, SvdError>> {
        match self {
            HostGrads::F32(g) => spectra_each(g),
            HostGrads::F64(g) => spectra_each(g),
        }
    }
}

/// The compute dtypes' host element types: [`HostGrads`] as a typed list and back.
pub trait HostReal: Real + Element {
    fn unwrap(g: HostGrads) -> Vec<MeasuredGrad<Self>>;
    fn wrap(g: Vec<MeasuredGrad<Self>>) -> HostGrads;
    /// `x` rounded to this type.
    fn of_f64(x: f64) -> Self;
}

impl HostReal for f32 {
    fn unwrap(g: HostGrads) -> Vec<MeasuredGrad<f32>> {
        match g {
            HostGrads::F32(g) => g,
            HostGrads::F64(_) => unreachable!("f32 compute gives f32 gradients"),
        }
    }
    fn wrap(g: Vec<MeasuredGrad<f32>>) -> HostGrads {
        HostGrads::F32(g)
    }
    fn of_f64(x: f64) -> f32 {
        x as f32
    }
}

impl HostReal for f64 {
    fn unwrap(g: HostGrads) -> Vec<MeasuredGrad<f64>> {
        match g {
            HostGrads::F64(g) => g,
            HostGrads::F32(_) => unreachable!("f64 compute gives f64 gradients"),
        }
    }
    fn wrap(g: Vec<MeasuredGrad<f64>>) -> HostGrads {
        HostGrads::F64(g)
    }
    fn of_f64(x: f64) -> f64 {
        x
    }
}

/// The loss and the gradients of one sample.
pub struct SampleGrads {
    pub loss: f64,
    /// In checkpoint order, named as in the checkpoint.
    pub grads: HostGrads,
}

fn download<B: Backend, T: Real + Element>(t: Tensor<B, 2>) -> HostMatrix<T> {
    let [rows, cols] = t.dims();
    let data = t
        .into_data()
        .convert::<T>()
        .into_vec::<T>()
        .expect("float data");
    HostMatrix { rows, cols, data }
}

/// Forward and backward; the entry statistics of every measured weight's gradient are reduced
/// where the gradient is (one transfer for all of them), and only what the singular values need
/// is copied to the host: the dense gradient, or its factors Δ and X (G = Δᵀ X) when `spectra`
/// chooses the factored path for that weight (each distinct X once).
pub fn sample_grads<B: GradBackend>(
    model: &LoadedModel<B>,
    sample: &Prepared,
    spectra: Spectra,
    pad_to: usize,
) -> SampleGrads {
    sample_grads_with(model, sample, spectra, pad_to, &mut |_| {})
}

/// [`sample_grads`], handing the backward pass's gradients to `on_backward` first (training reads
/// the gradients of the parameters it updates there).
pub fn sample_grads_with<B: GradBackend>(
    model: &LoadedModel<B>,
    sample: &Prepared,
    spectra: Spectra,
    pad_to: usize,
    on_backward: &mut dyn FnMut(&B::Gradients),
) -> SampleGrads {
    if <B::FloatElem as Element>::dtype() == DType::F64 {
        let (loss, g) = collect::<B, f64>(model, sample, spectra, pad_to, on_backward);
        SampleGrads {
            loss,
            grads: HostGrads::F64(g),
        }
    } else {
        let (loss, g) = collect::<B, f32>(model, sample, spectra, pad_to, on_backward);
        SampleGrads {
            loss,
            grads: HostGrads::F32(g),
        }
    }
}

fn collect<B: GradBackend, T: Real + Element>(
    model: &LoadedModel<B>,
    sample: &Prepared,
    spectra: Spectra,
    pad_to: usize,
    on_backward: &mut dyn FnMut(&B::Gradients),
) -> (f64, Vec<MeasuredGrad<T>>) {
    let tokens = sample.padded_ids(pad_to).len();
    let t0 = std::time::Instant::now();
    let wants = |dims: [usize; 2]| spectra.factored(tokens, dims[0], dims[1]);
    let any_factored = model.selected.iter().any(|s| wants(s.tensor.dims()));
    let capture = any_factored.then(Capture::<B>::default);
    let loss = response_loss(model, sample, capture.as_ref(), pad_to);
    let mut grads = loss.backward();
    on_backward(&grads);
    let loss_value = loss
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 data")[0];
    // Reading the loss waits for the device: on CUDA the first samples of a run spend minutes here
    // compiling and tuning kernels.
    tracing::debug!(
        tokens,
        loss = loss_value,
        "forward and backward done in {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    let device = model.device.clone();
    let zeros_like = |dims: [usize; 2]| zeros::<B::InnerBackend, 2>(dims, &device);

    // What the singular values of the weights on the factored path come from: their factors, or
    // with `--spectra gram` the R factors of the factors' QRs, computed where they are.
    let mut sources: HashMap<String, SpectrumSource<T>> = HashMap::new();
    if let Some(c) = capture {
        let inputs = c.inputs.into_inner();
        let mut host_inputs: Vec<Option<Arc<HostMatrix<T>>>> = vec![None; inputs.len()];
        let mut input_cores: Vec<Option<Option<Arc<faer::Mat<f64>>>>> = vec![None; inputs.len()];
        for e in c.entries.into_inner() {
            let [t, d_out] = e.probe.dims();
            let d_in = inputs[e.input].dims()[1];
            if !wants([d_out, d_in]) {
                continue;
            }
            let delta = e
                .probe
                .grad_remove(&mut grads)
                .unwrap_or_else(|| zeros_like([t, d_out]));
            if spectra == Spectra::Gram {
                // A factor that is not finite takes the host path, whose SVD reports it.
                let r_x = input_cores[e.input]
                    .get_or_insert_with(|| {
                        crate::measure::gram::gram_r(inputs[e.input].clone().inner())
                            .ok()
                            .map(Arc::new)
                    })
                    .clone();
                if let (Some(r_x), Ok(r_delta)) = (r_x, crate::measure::gram::gram_r(delta.clone()))
                {
                    sources.insert(e.name, SpectrumSource::Cores(Cores { r_delta, r_x }));
                    continue;
                }
            }
            let x = host_inputs[e.input]
                .get_or_insert_with(|| Arc::new(download(inputs[e.input].clone().inner())))
                .clone();
            sources.insert(
                e.name,
                SpectrumSource::Factored(Factors {
                    x,
                    delta: download(delta),
                }),
            );
        }
    }
    let gradients = model
        .selected
        .iter()
        .map(|s| {
            // A weight the loss does not reach has a zero gradient (as a zero-filled .grad).
            let g = s
                .tensor
                .grad_remove(&mut grads)
                .unwrap_or_else(|| zeros_like(s.tensor.dims()));
            (s.name.clone(), g)
        })
        .collect();
    let measured = measured_grads(gradients, sources);
    tracing::debug!(
        "gradients reduced and copied to the host in {:.3} s after the start of the sample",
        t0.elapsed().as_secs_f64()
    );
    (loss_value, measured)
}

/// The measured gradients `(name, gradient)` with their entry statistics reduced where they are
/// (one transfer for all of them), and what their singular values come from: the source in
/// `sources` under that name (factors, or R factors), else the dense gradient copied to the host.
pub fn measured_grads<B: Backend, T: Real + Element>(
    gradients: Vec<(String, Tensor<B, 2>)>,
    mut sources: HashMap<String, SpectrumSource<T>>,
) -> Vec<MeasuredGrad<T>> {
    // Every gradient's entry statistics in one transfer: [sum, max, min, Σx²] per weight.
    let mut reductions = Vec::with_capacity(gradients.len());
    let mut dense = Vec::with_capacity(gradients.len());
    let mut shapes = Vec::with_capacity(gradients.len());
    for (name, g) in gradients {
        let dims = g.dims();
        // Max and min in two stages, over the rows first (one partial result per column): a
        // reduction of all entries to one value runs on one GPU thread in burn-cuda without
        // autotuning (cubek's `Unit` routine), 4 s per Qwen2-1.5B sample on an H100 against
        // milliseconds this way. The sums are one-kernel atomic reductions already.
        let flat: Tensor<B, 1> = g.clone().reshape([dims[0] * dims[1]]);
        reductions.push(Tensor::cat(
            vec![
                flat.clone().sum(),
                g.clone().max_dim(0).max(),
                g.clone().min_dim(0).min(),
                flat.powi_scalar(2).sum(),
            ],
            0,
        ));
        dense.push((!sources.contains_key(&name)).then(|| download::<_, T>(g)));
        shapes.push((name, dims));
    }
    let reduced: Vec<f64> = if reductions.is_empty() {
        Vec::new()
    } else {
        Tensor::cat(reductions, 0)
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .expect("f64 data")
    };
    shapes
        .into_iter()
        .zip(dense)
        .enumerate()
        .map(|(i, ((name, [rows, cols]), dense))| {
            let r = &reduced[4 * i..4 * i + 4];
            let entries = EntryStats {
                mean: r[0] / (rows * cols) as f64,
                max: r[1],
                min: r[2],
                frobenius: r[3].max(0.0).sqrt(),
            };
            let source = match dense {
                Some(m) => SpectrumSource::Dense(m),
                None => sources.remove(&name).expect("a source"),
            };
            MeasuredGrad {
                name,
                rows,
                cols,
                entries,
                source,
            }
        })
        .collect()
}

/// Forward and backward only (the benchmark's "forward+backward alone"): the loss and one scalar
/// that depends on every measured gradient, read back so that the device has finished.
/// One sample's loss, forward and backward without any statistics: the backward pass's
/// gradients go to `on_backward` (a training step without statistics accumulates them there).
pub fn loss_and_gradients<B: GradBackend>(
    model: &LoadedModel<B>,
    sample: &Prepared,
    pad_to: usize,
    on_backward: &mut dyn FnMut(&B::Gradients),
) -> f64 {
    let loss = response_loss(model, sample, None, pad_to);
    let grads = loss.backward();
    on_backward(&grads);
    loss.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 data")[0]
}

pub fn forward_backward_only<B: GradBackend>(
    model: &LoadedModel<B>,
    sample: &Prepared,
    pad_to: usize,
) -> f64 {
    let loss = response_loss(model, sample, None, pad_to);
    let mut grads = loss.backward();
    let mut total = loss.inner();
    for s in &model.selected {
        if let Some(g) = s.tensor.grad_remove(&mut grads) {
            total = total + g.sum();
        }
    }
    total
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 data")[0]
}

#[cfg(test)]
mod tests {
    use super::loss_rows;

    #[test]
    fn loss_rows_cover_the_response_in_a_padded_shape() {
        // Room after the response: start at the first loss position.
        assert_eq!(loss_rows(10, 119, 192, 64), (10, 128));
        // The sequence (130 → 192 padded) ends before first + 128: start earlier.
        assert_eq!(loss_rows(100, 29, 192, 64), (100, 64));
        assert_eq!(loss_rows(150, 41, 192, 64), (128, 64));
        // No padding: exactly the loss positions.
        assert_eq!(loss_rows(10, 119, 130, 1), (10, 119));
        // A sequence that is already a multiple: 128 positions, 127 loss positions from 0.
        assert_eq!(loss_rows(0, 127, 128, 64), (0, 128));
        for (first, n, len) in [(3, 60, 64), (63, 1, 128), (5, 100, 128)] {
            let (start, rows) = loss_rows(first, n, len, 64);
            assert!(start <= first && first + n <= start + rows && start + rows <= len);
        }
    }
}
