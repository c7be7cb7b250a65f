//! One forward and one backward pass of one sample, and the gradients of the measured weights
//! (and, when asked, the low-rank factors of each gradient).

use crate::sample::Prepared;
use crate::stats::{Factors, GradMatrix};
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use gradlens_models::LoadedModel;
use gradlens_models::blocks::{Capture, int_tensor};

/// The loss and the gradients of one sample, on the host.
pub struct SampleGrads {
    pub loss: f64,
    /// In checkpoint order, named as in the checkpoint; with the factors Δ and X when captured.
    pub grads: Vec<(String, GradMatrix, Option<Factors>)>,
}

/// Mean negative log-likelihood of the response tokens; logits are formed only at the positions
/// that carry loss.
pub fn response_loss<B: AutodiffBackend>(
    model: &LoadedModel<B>,
    sample: &Prepared,
    capture: Option<&Capture<B>>,
) -> Tensor<B, 1> {
    let device = model.device.clone();
    let first = sample.first_loss_position();
    let n = sample.n_loss_tokens();
    let hidden = model.model.hidden(&sample.ids, capture);
    let logits = model.model.logits(hidden.narrow(0, first, n));
    let targets: Vec<i64> = sample.ids[first + 1..first + 1 + n]
        .iter()
        .map(|&i| i as i64)
        .collect();
    let targets = int_tensor::<B, 2>(targets, [n, 1], &device);
    log_softmax(logits, 1).gather(1, targets).mean().neg()
}

fn host<B: burn::tensor::backend::Backend>(t: Tensor<B, 2>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64 data")
}

/// Forward, backward, and the gradients of every measured weight copied to the host in f64;
/// with `factors`, also each gradient's factors (G = Δᵀ X).
pub fn sample_grads<B: AutodiffBackend>(
    model: &LoadedModel<B>,
    sample: &Prepared,
    factors: bool,
) -> SampleGrads {
    let capture = factors.then(Capture::<B>::default);
    let loss = response_loss(model, sample, capture.as_ref());
    let loss_value = loss
        .clone()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 data")[0];
    let mut grads = loss.backward();
    let mut captured: std::collections::HashMap<String, Factors> = std::collections::HashMap::new();
    if let Some(c) = capture {
        for e in c.entries.into_inner() {
            let [t, d_in] = e.input.dims();
            let d_out = e.probe.dims()[1];
            let delta = e
                .probe
                .grad_remove(&mut grads)
                .map(host)
                .unwrap_or_else(|| vec![0.0; t * d_out]);
            let x = host(e.input.inner());
            captured.insert(
                e.name,
                Factors {
                    tokens: t,
                    d_in,
                    d_out,
                    x,
                    delta,
                },
            );
        }
    }
    let grads = model
        .selected
        .iter()
        .map(|s| {
            let [rows, cols] = s.tensor.dims();
            let g = s
                .tensor
                .grad_remove(&mut grads)
                .map(host)
                // A weight the loss does not reach has a zero gradient (as a zero-filled .grad).
                .unwrap_or_else(|| vec![0.0; rows * cols]);
            let f = captured.remove(&s.name);
            (
                s.name.clone(),
                GradMatrix {
                    rows,
                    cols,
                    data: g,
                },
                f,
            )
        })
        .collect();
    SampleGrads {
        loss: loss_value,
        grads,
    }
}
