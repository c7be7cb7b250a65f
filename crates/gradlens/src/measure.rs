//! One forward and one backward pass of one sample, and the gradients of the measured weights.

use crate::sample::Prepared;
use crate::stats::GradMatrix;
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use gradlens_models::LoadedModel;
use gradlens_models::blocks::int_tensor;

/// The loss and the gradients of one sample, on the host.
pub struct SampleGrads {
    pub loss: f64,
    /// In checkpoint order, named as in the checkpoint.
    pub grads: Vec<(String, GradMatrix)>,
}

/// Mean negative log-likelihood of the response tokens; logits are formed only at the positions
/// that carry loss.
pub fn response_loss<B: AutodiffBackend>(
    model: &LoadedModel<B>,
    sample: &Prepared,
) -> Tensor<B, 1> {
    let device = model.device.clone();
    let first = sample.first_loss_position();
    let n = sample.n_loss_tokens();
    let hidden = model.model.hidden(&sample.ids);
    let logits = model.model.logits(hidden.narrow(0, first, n));
    let targets: Vec<i64> = sample.ids[first + 1..first + 1 + n]
        .iter()
        .map(|&i| i as i64)
        .collect();
    let targets = int_tensor::<B, 2>(targets, [n, 1], &device);
    log_softmax(logits, 1).gather(1, targets).mean().neg()
}

/// Forward, backward, and the gradients of every measured weight copied to the host in f64.
pub fn sample_grads<B: AutodiffBackend>(model: &LoadedModel<B>, sample: &Prepared) -> SampleGrads {
    let loss = response_loss(model, sample);
    let loss_value = loss
        .clone()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 data")[0];
    let mut grads = loss.backward();
    let grads = model
        .selected
        .iter()
        .map(|s| {
            let [rows, cols] = s.tensor.dims();
            let g = s
                .tensor
                .grad_remove(&mut grads)
                .map(|g| {
                    g.into_data()
                        .convert::<f64>()
                        .into_vec::<f64>()
                        .expect("f64 data")
                })
                // A weight the loss does not reach has a zero gradient (as a zero-filled .grad).
                .unwrap_or_else(|| vec![0.0; rows * cols]);
            (
                s.name.clone(),
                GradMatrix {
                    rows,
                    cols,
                    data: g,
                },
            )
        })
        .collect();
    SampleGrads {
        loss: loss_value,
        grads,
    }
}
