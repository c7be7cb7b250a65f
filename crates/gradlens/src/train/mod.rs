//! `gradlens train`: fine-tuning with AdamW, recording the paper's gradient statistics of every
//! step's batch gradient (and, with `--per-sample`, of every sample's own gradient).
//!
//! The semantics are those of transformers' Trainer, so that runs compare:
//! - step k (1-based) takes the next `batch_size` usable samples ([`order`]);
//! - the batch loss is the token-weighted mean, L = Σ_tokens(−log p) / N, so
//!   ∇L = Σ_i (n_i / N) ∇ℓ_i with ℓ_i a sample's own mean loss (the paper's loss): each sample
//!   runs forward and backward on its own (the same pipeline as `grads`) and its gradient is
//!   accumulated with weight n_i / N;
//! - `grad_norm` is ‖∇L‖ before clipping, clipping is `clip_grad_norm_`
//!   ([`optimizer::clip_coefficient`]);
//! - the learning rate of step k is `lr · schedule(k − 1)` ([`schedule`]);
//! - AdamW as `torch.optim.AdamW`, weight decay on parameters of 2 or more dimensions only.

pub mod checkpoint;
pub mod lora;
pub mod optimizer;
pub mod order;
pub mod records;
pub mod run_dir;
mod saving;
pub mod schedule;
pub mod signals;
mod stats_thread;

use crate::backend::step_kernels::StepKernels;
use crate::backend::{BackendJob, Device, Dtype, GradBackend, dispatch};
use crate::load::adapter::{LoraConfig, Part, PeftAdapter, WEIGHTS_FILE, stat_name};
use crate::load::data::{Record, load_records};
use crate::measure::Work;
use crate::measure::backward::{
    HostGrads, HostReal, measured_grads, response_loss, sample_grads_with,
};
use crate::measure::options::RunOptions;
use crate::prepare::tokenizer::TextTokenizer;
use crate::prepare::{Preparation, Prepared, PromptMode, prepare_for_model};
use crate::spectra::stats::{Factors, HostMatrix, SpectrumSource};
use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Element, Tensor, TensorData};
use checkpoint::SaveDtype;
use gradlens_models::tensor::float_tensor;
use gradlens_models::{LoadedModel, ParamValue, paper_selector};
use optimizer::{AdamW, AdamWConfig, clip_coefficient, total_norm};
use order::SampleOrder;
use records::{EvalLine, StepLine};
use run_dir::{EVAL, PER_SAMPLE, RunDir, RunRecord, STEPS, Start, has_step};
use schedule::Schedule;
use serde::{Deserialize, Serialize};
use stats_thread::{StatsJob, StatsThread};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Which parameters training updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainSet {
    /// The paper's selection: 2-D weights that are square or in `self_attn`.
    #[default]
    Attention,
    /// Every parameter (tied embeddings are one parameter and receive both gradients).
    All,
}

impl TrainSet {
    fn picks(self, name: &str, shape: &[usize]) -> bool {
        match self {
            TrainSet::All => true,
            TrainSet::Attention => shape.len() == 2 && paper_selector(name, [shape[0], shape[1]]),
        }
    }
}

/// What a step records besides its loss, learning rate and gradient norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StepStats {
    /// The paper's statistics of the batch gradient of every measured weight (and of LoRA's
    /// adapters).
    #[default]
    Batch,
    /// None: a plain training loop (the overhead of the statistics is what it saves).
    None,
}

/// How long a run is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Steps(usize),
    Epochs(f64),
}

/// Options of one `train` run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// How the model runs (its checkpoint, sample length, dtype, backend, prompts, spectra,
    /// memory plan; no adapter: start from one with `lora`'s `init`, and the backend's padding).
    pub run: RunOptions,
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    pub batch_size: usize,
    pub length: Length,
    /// Shuffle each epoch with this seed.
    pub shuffle: Option<u64>,
    /// Seed of LoRA's initialisation of `A`.
    pub seed: u64,
    pub train: TrainSet,
    /// LoRA: train adapters of the target layers instead of the weights ([`lora`]).
    pub lora: Option<lora::LoraArgs>,
    /// With LoRA: also write the merged model as a Hugging Face checkpoint (`final-merged/`).
    pub save_merged: bool,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub adamw: AdamWConfig,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    /// What each step records (`--stats`).
    pub stats: StepStats,
    pub per_sample: bool,
    pub eval_data: Option<PathBuf>,
    pub eval_every: Option<usize>,
    pub save_every: Option<usize>,
    pub save_dtype: Option<SaveDtype>,
    pub resume: bool,
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub first_step: usize,
    pub last_step: usize,
    pub total_steps: usize,
    pub samples: usize,
    pub seconds: f64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub last_grad_norm: Option<f64>,
    pub eval: Option<(f64, f64)>,
    pub out: PathBuf,
    /// Per step run: its samples and seconds (statistics, update and writing included; the
    /// evaluations and checkpoints not).
    pub step_times: Vec<(usize, f64)>,
    /// Stopped by a termination signal (SIGTERM, SIGUSR1) after `last_step`, with a checkpoint
    /// there: `--resume` continues.
    pub stopped: bool,
}

impl TrainSummary {
    /// A run that starts after step `start` of `total`, nothing done yet.
    fn starting(start: usize, total: usize, out: &Path) -> Self {
        Self {
            first_step: start + 1,
            last_step: start,
            total_steps: total,
            samples: 0,
            seconds: 0.0,
            first_loss: None,
            last_loss: None,
            last_grad_norm: None,
            eval: None,
            out: out.to_path_buf(),
            step_times: Vec::new(),
            stopped: false,
        }
    }

    /// The paragraph printed at the end of a run.
    pub fn paragraph(&self) -> String {
        if self.stopped {
            return format!(
                "{}: stopped by a termination signal after step {} of {} (checkpoint-{} written, \
                 nothing lost); the same command with --resume continues",
                self.out.display(),
                self.last_step,
                self.total_steps,
                self.last_step
            );
        }
        if self.first_step > self.last_step {
            return format!(
                "{}: the run is complete already ({} steps); nothing to do. Final weights in {}",
                self.out.display(),
                self.total_steps,
                self.out.join("final").display()
            );
        }
        let rate = self.samples as f64 / self.seconds.max(1e-9);
        let mut s = format!(
            "trained steps {}–{} of {} ({} samples) in {:.1} s ({:.3} samples/s)",
            self.first_step, self.last_step, self.total_steps, self.samples, self.seconds, rate
        );
        if let (Some(a), Some(b)) = (self.first_loss, self.last_loss) {
            s += &format!(
                "; batch loss {a:.4} at step {} → {b:.4} at step {}",
                self.first_step, self.last_step
            );
        }
        if let Some(g) = self.last_grad_norm {
            s += &format!(", last gradient norm {g:.4}");
        }
        if let Some((a, b)) = self.eval {
            s += &format!("; evaluation loss {a:.4} → {b:.4}");
        }
        s += &format!(
            ". Per-step statistics in {}, final weights in {}; `gradlens report --in {}` draws them.",
            self.out.join(STEPS).display(),
            self.out.join("final").display(),
            self.out.display()
        );
        s
    }
}

/// Run `gradlens train`.
pub fn run_train(opts: &TrainOptions) -> Result<TrainSummary> {
    struct Job<'a>(&'a TrainOptions);
    impl BackendJob for Job<'_> {
        type Output = TrainSummary;
        fn run<B: GradBackend>(self, device: &B::Device) -> Result<TrainSummary> {
            if <B::FloatElem as Element>::dtype() == DType::F64 {
                Trainer::<B, f64>::run(self.0, device)
            } else {
                Trainer::<B, f32>::run(self.0, device)
            }
        }
    }
    check_options(opts)?;
    dispatch(opts.run.backend, opts.run.dtype, Job(opts))
}

fn check_options(o: &TrainOptions) -> Result<()> {
    anyhow::ensure!(
        o.batch_size >= 1,
        "--batch-size 0: need at least 1 sample a step"
    );
    match o.length {
        Length::Steps(n) => anyhow::ensure!(n >= 1, "--steps 0: need at least 1 step"),
        Length::Epochs(e) => anyhow::ensure!(
            e.is_finite() && e > 0.0,
            "--epochs {e}: expected a number > 0"
        ),
    }
    anyhow::ensure!(
        o.lr.is_finite() && o.lr >= 0.0,
        "--lr {}: expected a number ≥ 0",
        o.lr
    );
    for (name, b) in [("--beta1", o.adamw.beta1), ("--beta2", o.adamw.beta2)] {
        anyhow::ensure!((0.0..1.0).contains(&b), "{name} {b}: expected 0 ≤ beta < 1");
    }
    anyhow::ensure!(
        o.adamw.eps.is_finite() && o.adamw.eps > 0.0,
        "--eps {}: expected a number > 0",
        o.adamw.eps
    );
    anyhow::ensure!(
        o.adamw.weight_decay.is_finite() && o.adamw.weight_decay >= 0.0,
        "--weight-decay {}: expected a number ≥ 0",
        o.adamw.weight_decay
    );
    anyhow::ensure!(
        o.max_grad_norm.is_finite() && o.max_grad_norm >= 0.0,
        "--max-grad-norm {}: expected a number ≥ 0 (0: no clipping)",
        o.max_grad_norm
    );
    o.run.check()?;
    anyhow::ensure!(
        o.run.adapter.is_none() && o.run.pad_to.is_none(),
        "train merges no adapter on load (start from one with --lora-init) and pads as its \
         backend does"
    );
    anyhow::ensure!(!o.data.is_empty(), "--data: at least one data file");
    if let Some(n) = o.eval_every {
        anyhow::ensure!(n >= 1, "--eval-every 0: expected a number of steps ≥ 1");
        anyhow::ensure!(o.eval_data.is_some(), "--eval-every needs --eval-data FILE");
    }
    if let Some(n) = o.save_every {
        anyhow::ensure!(n >= 1, "--save-every 0: expected a number of steps ≥ 1");
    }
    anyhow::ensure!(
        !(o.per_sample && o.stats == StepStats::None),
        "--per-sample records each sample's statistics: it does not go with --stats none"
    );
    anyhow::ensure!(
        o.lora.is_some() || !o.save_merged,
        "--save-merged needs --lora (a full fine-tuning saves the whole model already)"
    );
    Ok(())
}

/// The prepared samples of data files read one after the other (indices run on across files).
struct Samples {
    records: Vec<Record>,
    prepared: Vec<Option<Prepared>>,
}

fn read_samples(
    files: &[PathBuf],
    tokenizer: &TextTokenizer,
    mode: &PromptMode,
    vocab: usize,
) -> Result<(Samples, Vec<(usize, String)>)> {
    let mut records = Vec::new();
    for f in files {
        let r = load_records(f)?;
        anyhow::ensure!(!r.is_empty(), "{}: holds no records", f.display());
        records.extend(r);
    }
    let mut prepared = Vec::with_capacity(records.len());
    let mut skipped = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match prepare_for_model(tokenizer, mode, r, i, vocab)? {
            Preparation::Ready(p) => {
                prepared.push(Some(p));
            }
            Preparation::Skip(reason) => {
                skipped.push((i, reason));
                prepared.push(None);
            }
        }
    }
    Ok((Samples { records, prepared }, skipped))
}

/// The settings that decide a run's numbers, as recorded in run.json.
fn settings(
    o: &TrainOptions,
    total_steps: usize,
    lora: Option<&(LoraConfig, Option<PeftAdapter>)>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    use serde_json::json;
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        m.insert(k.to_string(), v);
    };
    put("--batch-size", json!(o.batch_size));
    put("steps (from --steps or --epochs)", json!(total_steps));
    put("--shuffle --seed", json!(o.shuffle));
    if o.lora.is_none() {
        put("--train", json!(o.train));
    }
    put("--lr", json!(o.lr));
    put("--schedule", json!(o.schedule));
    put("--warmup-steps", json!(o.warmup_steps));
    put("--beta1", json!(o.adamw.beta1));
    put("--beta2", json!(o.adamw.beta2));
    put("--eps", json!(o.adamw.eps));
    put("--weight-decay", json!(o.adamw.weight_decay));
    put("--max-grad-norm", json!(o.max_grad_norm));
    put("--dtype", json!(o.run.dtype));
    put(
        "--backend",
        json!(o.run.backend.to_string().split(':').next().unwrap_or("")),
    );
    put("--max-length", json!(o.run.max_length));
    put("--instruct/--single-bos", json!(o.run.mode.describe()));
    if let Some(system) = o.run.mode.system_turn() {
        put("system turn (the chat template decides)", json!(system));
    }
    put("--spectra", json!(o.run.spectra));
    if o.stats != StepStats::Batch {
        put("--stats", json!(o.stats));
    }
    put("--per-sample", json!(o.per_sample));
    put("--eval-every", json!(o.eval_every));
    put("--save-every", json!(o.save_every));
    put("--save-dtype", json!(o.save_dtype));
    if let Some((config, init)) = lora {
        put("--lora (r)", json!(config.r));
        put("--lora-alpha", json!(config.alpha));
        put("--lora-targets", json!(config.targets));
        put("--lora-dropout", json!(config.dropout));
        put("--use-rslora", json!(config.rslora));
        put(
            "--seed (LoRA's A)",
            json!(if init.is_some() { None } else { Some(o.seed) }),
        );
        put(
            "--lora-init (adapter_model.safetensors' SHA-256)",
            json!(
                init.as_ref()
                    .map(|a| crate::load::fingerprint::sha256_file(&a.dir.join(WEIGHTS_FILE)))
                    .transpose()?
            ),
        );
    }
    Ok(m)
}

/// A training run on backend `B` with host element `T` (the compute dtype).
struct Trainer<'a, B: GradBackend, T: HostReal> {
    opts: &'a TrainOptions,
    model: LoadedModel<B>,
    /// Indices into `model.params` of the trained parameters.
    trained: Vec<usize>,
    optimizer: AdamW<B::InnerBackend>,
    /// LoRA: the adapters (the optimizer's parameters, `A` and `B` of each in turn) and their
    /// scale; `trained` then holds the gradients' parameters (targets and measured weights).
    lora: Option<Lora<B::InnerBackend>>,
    pad_to: usize,
    _t: std::marker::PhantomData<T>,
}

/// What the forward and backward passes of a batch leave for the rest of its step.
struct Accumulated<B: Backend, T> {
    /// The batch gradient of every trained parameter, flat, in `Trainer::trained`'s order.
    grads: Vec<Tensor<B, 1>>,
    /// Σ loss × response tokens over the batch.
    loss_sum: f64,
    /// Tokens that ran (padding included), for the choice of the spectra's path.
    tokens: usize,
    /// Per sample, per measured weight: its gradient's factors (`None` where it took another path).
    factors: Vec<Vec<Option<Factors<T>>>>,
}

/// A run's LoRA state.
struct Lora<B: Backend> {
    config: LoraConfig,
    adapters: Vec<lora::Adapter<B>>,
}

impl<'a, B: GradBackend, T: HostReal> Trainer<'a, B, T> {
    fn run(opts: &'a TrainOptions, device: &B::Device) -> Result<TrainSummary> {
        let t0 = Instant::now();
        let lora_setup = opts.lora.as_ref().map(lora::resolve).transpose()?;
        // The weights, one sample's activations and the training state must fit.
        if !matches!(opts.run.backend, Device::Cuda(_)) {
            let config = opts.run.model.join("config.json");
            let pad = opts.run.pad_to().max(1);
            let tokens = opts.run.max_length.div_ceil(pad) * pad;
            let bytes = match opts.run.dtype {
                Dtype::F32 => 4,
                Dtype::F64 => 8,
            };
            let mut e = crate::measure::resources::estimate(&config, tokens, bytes)?;
            let set = opts.train;
            e.training = match &lora_setup {
                Some((c, _)) => crate::measure::resources::training_state(
                    &config,
                    bytes,
                    &|_, _| false,
                    Some(crate::measure::resources::LoraShape {
                        rank: c.r,
                        targets: &|n| c.targets_weight(n),
                    }),
                )?,
                None => crate::measure::resources::training_state(
                    &config,
                    bytes,
                    &|n, shape| set.picks(n, shape),
                    None,
                )?,
            };
            crate::measure::resources::check_estimate(&config, e, tokens, opts.run.max_memory)?;
        }
        let tokenizer = TextTokenizer::from_dir(&opts.run.model, opts.run.max_length)?;
        let set = opts.train;
        let lora_config = lora_setup.as_ref().map(|(c, _)| c.clone());
        // With LoRA the gradients needed are those of the targets (the adapters' come from them)
        // and of the measured weights; nothing of the model itself is updated.
        let measuring = opts.stats == StepStats::Batch;
        let trains = move |name: &str, shape: &[usize]| match &lora_config {
            Some(c) => {
                shape.len() == 2
                    && (c.targets_weight(name)
                        || measuring && paper_selector(name, [shape[0], shape[1]]))
            }
            None => set.picks(name, shape),
        };
        let model = gradlens_models::load_for_training::<B>(
            &opts.run.model,
            device,
            &paper_selector,
            &trains,
        )?;
        anyhow::ensure!(
            !model.wrapped,
            "{}: a multimodal checkpoint: train its text model instead (a checkpoint of the \
             text part alone, model_type {})",
            opts.run.model.display(),
            model.model_type
        );
        // The adapters, checked against the model before the run directory is claimed.
        let lora = match &lora_setup {
            Some((config, init)) => Some(Lora::<B::InnerBackend>::start(
                &model,
                config.clone(),
                init.as_ref(),
                opts.seed,
            )?),
            None => None,
        };
        let vocab = model.model.vocab_size();
        let (samples, skipped) = read_samples(&opts.data, &tokenizer, &opts.run.mode, vocab)?;
        for (i, reason) in skipped.iter().take(5) {
            tracing::warn!("sample {i} is not used: {reason}");
        }
        if skipped.len() > 5 {
            tracing::warn!("{} more samples are not used", skipped.len() - 5);
        }
        let usable: Vec<usize> = (0..samples.prepared.len())
            .filter(|&i| samples.prepared[i].is_some())
            .collect();
        anyhow::ensure!(
            !usable.is_empty(),
            "no usable sample in {} (every one was skipped: {})",
            opts.data
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            skipped.first().map(|s| s.1.as_str()).unwrap_or("")
        );
        let order = SampleOrder::new(usable, opts.shuffle);
        let total = match opts.length {
            Length::Steps(n) => n,
            Length::Epochs(e) => order.steps_for_epochs(e, opts.batch_size),
        };
        let eval = match &opts.eval_data {
            Some(f) => {
                Some(read_samples(std::slice::from_ref(f), &tokenizer, &opts.run.mode, vocab)?.0)
            }
            None => None,
        };
        let record = RunRecord::new(
            &opts.run.model,
            &opts.data,
            opts.eval_data.as_deref(),
            settings(opts, total, lora_setup.as_ref())?,
        )?;
        let mut inputs: Vec<&Path> = vec![&opts.run.model];
        inputs.extend(opts.data.iter().map(PathBuf::as_path));
        inputs.extend(opts.eval_data.as_deref());
        let run = RunDir::claim(&opts.out, &record, &inputs, opts.resume)?;
        let start_at = run.start(total)?;
        if start_at == Start::Complete {
            return Ok(TrainSummary::starting(total, total, &opts.out));
        }

        let trained: Vec<usize> = (0..model.params.len())
            .filter(|&i| model.params[i].trained)
            .collect();
        let lengths: Vec<usize> = match &lora {
            Some(l) => l
                .adapters
                .iter()
                .flat_map(|a| [a.a.dims(), a.b.dims()])
                .map(|[r, c]| r * c)
                .collect(),
            None => trained
                .iter()
                .map(|&i| model.params[i].value.numel())
                .collect(),
        };
        let optimizer = AdamW::new(opts.adamw, &lengths, device);
        let mut trainer = Trainer::<B, T> {
            opts,
            model,
            trained,
            optimizer,
            lora,
            pad_to: opts.run.pad_to(),
            _t: std::marker::PhantomData,
        };
        if trainer.lora.is_some() {
            trainer.merge_adapters();
        }
        let Start::After(start, from) = start_at else {
            unreachable!("handled above")
        };
        if let Some(dir) = &from {
            trainer.restore(dir)?;
            tracing::info!("resuming {} after step {start}", opts.out.display());
        }

        let steps_out = run_dir::appender(&run.file(STEPS))?;
        let per_sample_out = if opts.per_sample {
            Some(run_dir::appender(&run.file(PER_SAMPLE))?)
        } else {
            None
        };
        let mut eval_out = match &eval {
            Some(_) => Some(run_dir::appender(&run.file(EVAL))?),
            None => None,
        };
        let mut summary = TrainSummary::starting(start, total, &opts.out);
        let mut eval_first = None;
        if let (Some(ev), Some(w)) = (&eval, &mut eval_out)
            && start == 0
            && !has_step(&run.file(EVAL), 0)
        {
            let line = trainer.evaluate(ev, 0);
            eval_first = Some(line.loss);
            w.append(&line)?;
        }
        let bar = opts.progress.then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "train [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {msg}  ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_position(start as u64);
            bar.reset_eta();
            bar
        });
        let t_steps = Instant::now();
        let termination = crate::train::signals::Termination::watch();
        // A step's statistics run on their own thread while the next step runs forward and
        // backward; its lines are written in step order, all of them before any checkpoint.
        let stopped = std::thread::scope(|scope| -> Result<bool> {
            let mut stats = StatsThread::start(scope, steps_out, per_sample_out, start);
            for step in start + 1..=total {
                let t_step = Instant::now();
                let batch = order.batch(step, opts.batch_size);
                let (line, batch_grads) =
                    trainer.step(step, total, &batch, &samples, &mut |work| {
                        stats.send(StatsJob::Sample { step, work })
                    })?;
                stats.send(StatsJob::Step {
                    line: line.clone(),
                    batch: batch_grads,
                })?;
                summary
                    .step_times
                    .push((batch.len(), t_step.elapsed().as_secs_f64()));
                summary.samples += batch.len();
                summary.first_loss.get_or_insert(line.loss);
                summary.last_loss = Some(line.loss);
                summary.last_grad_norm = Some(line.grad_norm);
                summary.last_step = step;
                let due = |every: Option<usize>| every.is_some_and(|n| step % n == 0);
                if let (Some(ev), Some(w)) = (&eval, &mut eval_out)
                    && (due(opts.eval_every) || step == total)
                {
                    let e = trainer.evaluate(ev, step);
                    eval_first.get_or_insert(e.loss);
                    summary.eval = eval_first.map(|a| (a, e.loss));
                    w.append(&e)?;
                }
                let stopping = termination.requested() && step < total;
                if (due(opts.save_every) || stopping) && step < total {
                    // The wait for the statistics counts in the step's time.
                    let t_drain = Instant::now();
                    stats.drain(step)?;
                    if let Some(last) = summary.step_times.last_mut() {
                        last.1 += t_drain.elapsed().as_secs_f64();
                    }
                    trainer.save(&run.file(&format!("checkpoint-{step}")), step, total, true)?;
                }
                if stopping {
                    tracing::warn!("a termination signal: stopping after step {step}");
                    stats.finish()?;
                    return Ok(true);
                }
                if let Some(bar) = &bar {
                    let rate = summary.samples as f64 / t_steps.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!(
                        "loss {:.4}  lr {:.2e}  {:.2} samples/s",
                        line.loss, line.lr, rate
                    ));
                    bar.set_position(step as u64);
                }
            }
            // The last steps' statistics count in the last step's time.
            let t_drain = Instant::now();
            stats.finish()?;
            if let Some(last) = summary.step_times.last_mut() {
                last.1 += t_drain.elapsed().as_secs_f64();
            }
            Ok(false)
        })?;
        if stopped {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            summary.stopped = true;
            summary.seconds = t0.elapsed().as_secs_f64();
            return Ok(summary);
        }
        trainer.save(&run.file("final"), total, total, false)?;
        if opts.save_merged {
            trainer.save_model(&run.file("final-merged"), total, total, false)?;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        summary.seconds = t0.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// One optimizer step on the samples `batch`: forward and backward of every sample with the
    /// batch gradient accumulated ([`Trainer::accumulate`]), the batch gradient of the measured
    /// weights on the host ([`Trainer::batch_gradients`]), then the clipped AdamW update
    /// ([`Trainer::update`]): the step's line without its statistics and the batch gradient for
    /// them, which the statistics thread computes ([`StatsJob`]); each sample's gradients go to
    /// `on_sample` as soon as its backward pass is done (`--per-sample`).
    fn step(
        &mut self,
        step: usize,
        total: usize,
        batch: &[usize],
        samples: &Samples,
        on_sample: &mut dyn FnMut(Work) -> Result<()>,
    ) -> Result<(StepLine, Option<HostGrads>)> {
        let prepared: Vec<&Prepared> = batch
            .iter()
            .map(|&i| samples.prepared[i].as_ref().expect("usable"))
            .collect();
        let n_total: usize = prepared.iter().map(|p| p.n_loss_tokens()).sum();
        // Each sample's share of the batch's response tokens: its gradient's weight in ∇L.
        let weights: Vec<f64> = prepared
            .iter()
            .map(|p| p.n_loss_tokens() as f64 / n_total as f64)
            .collect();
        let acc = self.accumulate(step, batch, &prepared, &weights, samples, on_sample)?;
        let (batch_grads, grads) =
            self.batch_gradients(acc.grads, &acc.factors, &weights, acc.tokens);
        let (lr, grad_norm) = self.update(step, total, grads)?;
        let line = StepLine {
            step,
            lr,
            loss: acc.loss_sum / n_total as f64,
            grad_norm,
            n_samples: batch.len(),
            n_loss_tokens: n_total,
            samples: batch.to_vec(),
            weights: Default::default(),
        };
        Ok((line, batch_grads))
    }

    /// Forward and backward of every sample of the batch: the batch gradient of every trained
    /// parameter accumulated in place (each sample's weighted by its share of the response
    /// tokens), with the statistics on, each sample's gradient factors (to stack into the batch
    /// gradient's) and, with `--per-sample`, its gradients.
    fn accumulate(
        &self,
        step: usize,
        batch: &[usize],
        prepared: &[&Prepared],
        weights: &[f64],
        samples: &Samples,
        on_sample: &mut dyn FnMut(Work) -> Result<()>,
    ) -> Result<Accumulated<B::InnerBackend, T>> {
        let opts = self.opts;
        let mut acc: Vec<Option<Tensor<B::InnerBackend, 1>>> = vec![None; self.trained.len()];
        let mut loss_sum = 0.0;
        let tokens: usize = prepared
            .iter()
            .map(|p| p.padded_ids(self.pad_to).len())
            .sum();
        // A sample's gradient factors serve its own statistics (`--per-sample`) and the batch
        // gradient's wherever its spectrum takes the factored path at the batch's length. Without
        // either (a batch longer than the measured weights are wide, `--spectra dense`), the
        // statistics need only the batch gradient itself: the plain backward pass, no capture.
        let measuring = opts.stats == StepStats::Batch;
        let capture = measuring
            && (opts.per_sample
                || self.model.selected.iter().any(|s| {
                    let [rows, cols] = s.tensor.dims();
                    opts.run.spectra.factored(tokens, rows, cols)
                }));
        let mut factors: Vec<Vec<Option<Factors<T>>>> = Vec::with_capacity(batch.len());
        for ((&index, &p), &weight) in batch.iter().zip(prepared).zip(weights) {
            let model = &self.model;
            let trained = &self.trained;
            let mut hook = |grads: &<B as AutodiffBackend>::Gradients| {
                for (k, &pi) in trained.iter().enumerate() {
                    if let Some(g) = model.params[pi].value.grad_flat(grads) {
                        acc[k] = Some(B::InnerBackend::accumulate(acc[k].take(), g, weight));
                    }
                }
            };
            if !capture {
                let loss =
                    crate::measure::backward::loss_and_gradients(model, p, self.pad_to, &mut hook);
                anyhow::ensure!(
                    loss.is_finite(),
                    "step {step}: sample {index}: non-finite loss {loss} (the weights or the \
                     data); stopping: the last checkpoint in {} is intact",
                    opts.out.display()
                );
                loss_sum += loss * p.n_loss_tokens() as f64;
                continue;
            }
            let sample = sample_grads_with(model, p, opts.run.spectra, self.pad_to, &mut hook);
            anyhow::ensure!(
                sample.loss.is_finite(),
                "step {step}: sample {index}: non-finite loss {} (the weights or the data); \
                 stopping: the last checkpoint in {} is intact",
                sample.loss,
                opts.out.display()
            );
            loss_sum += sample.loss * p.n_loss_tokens() as f64;
            let grads = T::unwrap(sample.grads);
            factors.push(
                grads
                    .iter()
                    .map(|g| match &g.source {
                        // The batch gradient's factors are the samples' factors stacked, kept
                        // only where the batch's spectrum takes the factored path.
                        SpectrumSource::Factored(f)
                            if opts.run.spectra.factored(tokens, g.rows, g.cols) =>
                        {
                            Some(f.clone())
                        }
                        // R factors do not stack: that batch gradient takes the dense path.
                        _ => None,
                    })
                    .collect(),
            );
            if opts.per_sample {
                let record = &samples.records[index];
                on_sample(Work::Measured {
                    index,
                    instr: record.instr(),
                    output: record.output.clone(),
                    loss: sample.loss,
                    n_tokens: p.ids.len(),
                    n_loss_tokens: p.n_loss_tokens(),
                    grads: T::wrap(grads),
                })?;
            }
        }
        let device = self.model.device.clone();
        let grads: Vec<Tensor<B::InnerBackend, 1>> = acc
            .into_iter()
            .zip(&self.trained)
            .map(|(g, &pi)| {
                g.unwrap_or_else(|| {
                    gradlens_models::tensor::zeros([self.model.params[pi].value.numel()], &device)
                })
            })
            .collect();

        Ok(Accumulated {
            grads,
            loss_sum,
            tokens,
            factors,
        })
    }

    /// The batch gradient of every measured weight (with LoRA also of the adapters' `A` and `B`)
    /// on the host, its factors stacked where they decide its spectrum (the statistics follow on
    /// the statistics thread), and the gradients the optimizer takes: the trained parameters', or
    /// with LoRA the adapters' (from their targets' by the chain rule).
    fn batch_gradients(
        &self,
        grads: Vec<Tensor<B::InnerBackend, 1>>,
        factors: &[Vec<Option<Factors<T>>>],
        weights: &[f64],
        tokens: usize,
    ) -> (Option<HostGrads>, Vec<Tensor<B::InnerBackend, 1>>) {
        let opts = self.opts;
        // The batch gradient of every measured weight (all are trained).
        let index_of: HashMap<&str, usize> = self
            .trained
            .iter()
            .enumerate()
            .map(|(k, &pi)| (self.model.params[pi].name.as_str(), k))
            .collect();
        let mut stacked_x: HashMap<Vec<usize>, Arc<HostMatrix<T>>> = HashMap::new();
        let mut gradients = Vec::with_capacity(self.model.selected.len());
        let mut batch_factors = HashMap::new();
        let measuring = opts.stats == StepStats::Batch;
        let measured: &[_] = if measuring { &self.model.selected } else { &[] };
        for (w, s) in measured.iter().enumerate() {
            let k = *index_of
                .get(s.name.as_str())
                .expect("every measured weight has its gradient accumulated");
            let [rows, cols] = s.tensor.dims();
            gradients.push((s.name.clone(), grads[k].clone().reshape([rows, cols])));
            let parts: Option<Vec<&Factors<T>>> = factors.iter().map(|f| f[w].as_ref()).collect();
            if let Some(parts) = parts
                && !parts.is_empty()
                && opts.run.spectra.factored(tokens, rows, cols)
            {
                batch_factors.insert(
                    s.name.clone(),
                    SpectrumSource::Factored(stack(&parts, weights, &mut stacked_x)),
                );
            }
        }
        // LoRA: the adapters' gradients from their targets' (measured after the base weights).
        let grads = match &self.lora {
            Some(l) => {
                let scale = l.config.scale();
                let mut adapter_grads = Vec::with_capacity(2 * l.adapters.len());
                for a in &l.adapters {
                    let k = index_of[a.name.as_str()];
                    let [rows, cols] = a.base.dims();
                    let (ga, gb) = a.grads(grads[k].clone().reshape([rows, cols]), scale);
                    for (part, g) in [(Part::A, ga), (Part::B, gb)] {
                        let [r, c] = g.dims();
                        if measuring {
                            gradients.push((stat_name(&a.name, part), g.clone()));
                        }
                        adapter_grads.push(g.reshape([r * c]));
                    }
                }
                adapter_grads
            }
            None => grads,
        };
        let batch = measuring.then(|| {
            T::wrap(measured_grads::<B::InnerBackend, T>(
                gradients,
                batch_factors,
            ))
        });
        (batch, grads)
    }

    /// Clip the batch gradient's norm and take the AdamW step at the schedule's rate: the rate
    /// and the norm before clipping.
    fn update(
        &mut self,
        step: usize,
        total: usize,
        grads: Vec<Tensor<B::InnerBackend, 1>>,
    ) -> Result<(f64, f64)> {
        let opts = self.opts;
        let grad_norm = total_norm(&grads);
        anyhow::ensure!(
            grad_norm.is_finite(),
            "step {step}: non-finite gradient norm {grad_norm}; stopping: the last checkpoint in \
             {} is intact",
            opts.out.display()
        );
        let lr = opts.schedule.lr(opts.lr, step, opts.warmup_steps, total);
        let values = self.optimized_values();
        // Every optimized parameter of LoRA is a matrix.
        let decays: Vec<bool> = match &self.lora {
            Some(_) => vec![true; values.len()],
            None => self
                .trained
                .iter()
                .map(|&pi| self.model.params[pi].value.dims().len() >= 2)
                .collect(),
        };
        let grad_scale = clip_coefficient(grad_norm, opts.max_grad_norm);
        let updated = self.optimizer.step(values, grads, &decays, lr, grad_scale);
        self.set_optimized(updated);
        Ok((lr, grad_norm))
    }

    /// The values the optimizer updates, flat, in its order: the trained parameters, or with LoRA
    /// each adapter's `A` and `B`.
    fn optimized_values(&self) -> Vec<Tensor<B::InnerBackend, 1>> {
        match &self.lora {
            Some(l) => l
                .adapters
                .iter()
                .flat_map(|a| [a.a.clone(), a.b.clone()])
                .map(|t| {
                    let [r, c] = t.dims();
                    t.reshape([r * c])
                })
                .collect(),
            None => self
                .trained
                .iter()
                .map(|&pi| self.model.params[pi].value.inner_flat())
                .collect(),
        }
    }

    /// Put new values of what the optimizer updates (in its order) into the model.
    fn set_optimized(&mut self, values: Vec<Tensor<B::InnerBackend, 1>>) {
        match &mut self.lora {
            Some(l) => {
                let mut values = values.into_iter();
                for a in &mut l.adapters {
                    let (va, vb) = (values.next(), values.next());
                    a.a = va.expect("A").reshape(a.a.dims());
                    a.b = vb.expect("B").reshape(a.b.dims());
                }
                self.merge_adapters();
            }
            None => self.set_trained(values),
        }
    }

    /// LoRA: put the merged weights `W + s · B A` of the targets into the model.
    fn merge_adapters(&mut self) {
        let Some(l) = &self.lora else { return };
        let scale = l.config.scale();
        let new = l
            .adapters
            .iter()
            .map(|a| {
                let [r, c] = a.base.dims();
                let merged = a.merged(scale).reshape([r * c]);
                (a.param, ParamValue::<B>::leaf(merged, &[r, c], true))
            })
            .collect();
        self.model.set_params(new);
    }

    /// Put new values of the trained parameters (in order) into the model.
    fn set_trained(&mut self, values: Vec<Tensor<B::InnerBackend, 1>>) {
        let new = self
            .trained
            .iter()
            .zip(values)
            .map(|(&pi, v)| {
                let dims = self.model.params[pi].value.dims();
                (pi, ParamValue::<B>::leaf(v, &dims, true))
            })
            .collect();
        self.model.set_params(new);
    }

    /// The token-weighted loss on the evaluation samples after `step` steps.
    fn evaluate(&self, eval: &Samples, step: usize) -> EvalLine {
        let (mut sum, mut n, mut count) = (0.0, 0, 0);
        for p in eval.prepared.iter().flatten() {
            let loss = response_loss(&self.model, p, None, self.pad_to);
            let value = loss
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .expect("f64")[0];
            sum += value * p.n_loss_tokens() as f64;
            n += p.n_loss_tokens();
            count += 1;
        }
        EvalLine {
            step,
            loss: if n > 0 { sum / n as f64 } else { f64::NAN },
            n_samples: count,
            n_loss_tokens: n,
        }
    }
}

impl<B: Backend> Lora<B> {
    /// The adapters of `model`'s target weights (checkpoint order): `A` and `B` from the PEFT
    /// adapter `init`, else `A` as PEFT initialises it (from `seed`) and `B` zero.
    fn start<AB: GradBackend>(
        model: &LoadedModel<AB>,
        config: LoraConfig,
        init: Option<&PeftAdapter>,
        seed: u64,
    ) -> Result<Lora<AB::InnerBackend>> {
        let device = &model.device;
        let mut adapters = Vec::new();
        let mut used = 0;
        for (pi, p) in model.params.iter().enumerate() {
            let dims = p.value.dims();
            if dims.len() != 2 || !config.targets_weight(&p.name) {
                continue;
            }
            let (rows, cols) = (dims[0], dims[1]);
            let r = config.r;
            let (a, b) = match init {
                Some(adapter) => {
                    let (ta, tb) = adapter.weights.get(&p.name).with_context(|| {
                        format!(
                            "{}: no adapter for {} (a target of its target_modules)",
                            adapter.dir.join(WEIGHTS_FILE).display(),
                            p.name
                        )
                    })?;
                    anyhow::ensure!(
                        ta.dims == [r, cols] && tb.dims == [rows, r],
                        "{}: {}: lora_A {:?} and lora_B {:?} do not fit the weight's shape {:?}",
                        adapter.dir.join(WEIGHTS_FILE).display(),
                        p.name,
                        ta.dims,
                        tb.dims,
                        dims
                    );
                    used += 1;
                    (ta.values.clone(), tb.values.clone())
                }
                None => (lora::init_a(r, cols, seed, pi as u64), vec![0.0; rows * r]),
            };
            let matrix = |v: Vec<f64>, shape: [usize; 2]| -> Tensor<AB::InnerBackend, 2> {
                float_tensor::<AB::InnerBackend, 1>(
                    TensorData::new(v, [shape[0] * shape[1]]),
                    device,
                )
                .reshape(shape)
            };
            let base = match &p.value {
                ParamValue::Matrix(t) => t.clone().inner(),
                ParamValue::Vector(_) => unreachable!("two dimensions"),
            };
            adapters.push(lora::Adapter {
                name: p.name.clone(),
                param: pi,
                base,
                a: matrix(a, [r, cols]),
                b: matrix(b, [rows, r]),
            });
        }
        if adapters.is_empty() {
            let mut modules: Vec<&str> = model
                .params
                .iter()
                .filter(|p| p.value.dims().len() == 2)
                .filter_map(|p| p.name.strip_suffix(".weight")?.rsplit('.').next())
                .collect();
            modules.sort();
            modules.dedup();
            anyhow::bail!(
                "--lora-targets {}: matches no linear layer of the model (its layers: {})",
                config.targets.join(","),
                modules.join(", ")
            );
        }
        if let Some(adapter) = init
            && used != adapter.weights.len()
        {
            let extra: Vec<&String> = adapter
                .weights
                .keys()
                .filter(|n| !adapters.iter().any(|a| &a.name == *n))
                .collect();
            anyhow::bail!(
                "{}: adapters for weights the model does not have or its target_modules do not                  name: {}",
                adapter.dir.join(WEIGHTS_FILE).display(),
                extra
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Lora { config, adapters })
    }
}

/// The factors of a batch gradient Σ_i w_i Δ_iᵀ X_i = [w_1 Δ_1; …]ᵀ [X_1; …]: the samples' factors
/// stacked by rows, Δ scaled. The stacked X of the same per-sample inputs (q, k and v share
/// theirs) is built once.
fn stack<T: HostReal>(
    parts: &[&Factors<T>],
    weights: &[f64],
    stacked_x: &mut HashMap<Vec<usize>, Arc<HostMatrix<T>>>,
) -> Factors<T> {
    let key: Vec<usize> = parts.iter().map(|f| Arc::as_ptr(&f.x) as usize).collect();
    let x = stacked_x
        .entry(key)
        .or_insert_with(|| {
            let cols = parts[0].x.cols;
            let mut data = Vec::with_capacity(parts.iter().map(|f| f.x.data.len()).sum());
            for f in parts {
                data.extend_from_slice(&f.x.data);
            }
            Arc::new(HostMatrix {
                rows: data.len() / cols.max(1),
                cols,
                data,
            })
        })
        .clone();
    let cols = parts[0].delta.cols;
    let mut data = Vec::with_capacity(parts.iter().map(|f| f.delta.data.len()).sum());
    for (f, &w) in parts.iter().zip(weights) {
        let w = T::of_f64(w);
        data.extend(f.delta.data.iter().map(|&v| v * w));
    }
    Factors {
        x,
        delta: HostMatrix {
            rows: data.len() / cols.max(1),
            cols,
            data,
        },
    }
}
