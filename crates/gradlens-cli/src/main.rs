//! The `gradlens` command line.

/// Large tensors are allocated and freed on every op: mimalloc reuses their pages where the system
/// allocator returns them to the kernel and page-faults them back (measured in docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use gradlens::backend::{Device, Dtype};
use gradlens::commands::grads::{GradsOptions, run_grads};
use gradlens::measure::options::{DEFAULT_MAX_LENGTH, RunOptions};
use gradlens::prepare::{InstructOptions, PromptMode};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gradlens",
    version,
    about = "Layer-wise gradient spectra of LLMs on instruction data (arXiv 2410.23743)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure per-sample gradient statistics of a data file into a JSONL (resumable).
    Grads(GradsArgs),
    /// Fine-tune with AdamW, recording the gradient statistics of every step (and, with
    /// --per-sample, of every sample) into a run directory; resumable.
    Train(TrainArgs),
    /// Curves, MAD tables, figures and report.md/html from measurement JSONL.
    Report(gradlens::commands::report::ReportArgs),
    /// A random-initialised checkpoint from a config.json (any supported family), e.g. to
    /// benchmark a real shape without downloading weights.
    Init {
        /// A config.json, or a directory holding one (see configs/shapes/).
        #[arg(long)]
        config: PathBuf,
        /// Seed: the same seed and config give the same weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output checkpoint directory.
        #[arg(long)]
        out: PathBuf,
        /// Storage dtype of the weights: f32, or bf16 (half the size; cast on load).
        #[arg(long, default_value = "f32")]
        dtype: gradlens::commands::init::StoreDtype,
        /// Copy tokenizer.json and tokenizer_config.json from this directory (e.g.
        /// configs/tokenizer).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Replace an existing model.safetensors.
        #[arg(long)]
        force: bool,
    },
    /// Measure every committed fixture (fixtures/*/expected, the transformers float64 reference)
    /// on a backend and compare: the parity check of a GPU build.
    Check {
        /// The fixtures directory.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// The paper's data (for the references on its first samples), when present.
        #[arg(long, default_value = "../shared/paper-data")]
        paper_data: PathBuf,
        #[arg(long, default_value = "cpu")]
        backend: Device,
        #[arg(long, default_value = "f32")]
        dtype: Dtype,
        /// Relative tolerance (default: 1e-4 for f32, 1e-9 for f64).
        #[arg(long, value_parser = parse_rtol)]
        rtol: Option<f64>,
        /// Sequence padding, as for `grads` (default: 64 on CUDA, none on the CPU).
        #[arg(long)]
        pad_to: Option<usize>,
    },
    /// Benchmark against the paper's PyTorch pipeline (same checkpoint, same samples, one run).
    Bench(gradlens::commands::bench::BenchArgs),
    /// A GGUF file (llama.cpp's format: Llama, Mistral, Qwen2, Qwen3, Gemma 2 or Gemma 3 with a byte-level BPE vocabulary; F32, F16,
    /// BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) as a Hugging Face checkpoint directory, weights
    /// dequantized to f32. (`--model FILE.gguf` does this once into gradlens' cache.)
    ImportGguf {
        /// The GGUF file.
        file: PathBuf,
        /// The checkpoint directory to write (must not exist yet).
        #[arg(long)]
        out: PathBuf,
    },
    /// The supported model families (config.json's model_type).
    Models,
    /// Compare two measurement JSONL files (e.g. against the transformers reference).
    Compare {
        /// The reference JSONL.
        #[arg(long)]
        expected: PathBuf,
        /// The JSONL to check.
        #[arg(long)]
        actual: PathBuf,
        /// Relative tolerance (see the README for the rule per statistic).
        #[arg(long, default_value_t = 1e-9, value_parser = parse_rtol)]
        rtol: f64,
    },
}

/// What every command that runs a model takes: the checkpoint, how samples are prepared, where
/// and in what dtype the model runs, how singular values are computed.
#[derive(clap::Args)]
struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json), a hub
    /// model id (`Qwen/Qwen3-1.7B`) already in the local Hugging Face cache (offline), or a GGUF
    /// file.
    #[arg(long)]
    model: PathBuf,
    /// With a hub model id: the branch, tag or commit of the cached snapshot (default main).
    #[arg(long)]
    revision: Option<String>,
    /// Truncate each sample to this many tokens.
    #[arg(long, default_value_t = DEFAULT_MAX_LENGTH)]
    max_length: usize,
    /// Compute dtype: f32 (as the paper) or f64 (reference precision).
    #[arg(long, default_value_t = Dtype::default())]
    dtype: Dtype,
    /// Where the model runs: cpu (Burn's NdArray, f32 and f64), flex (Burn's Flex, f32), libtorch
    /// (a build with `--features tch`), cuda / cuda:N (a build with `--features cuda`, f32).
    #[arg(long, default_value_t = Device::default())]
    backend: Device,
    /// Instruct model: render the checkpoint's chat template (system "You are a helpful
    /// assistant." — none for Gemma families — and the instruction as user turn), then the output.
    #[arg(long)]
    instruct: bool,
    /// With --instruct: tokenise the rendered text without adding special tokens again, so a
    /// template that starts with BOS gives one BOS (the paper's way, the default, gives two).
    #[arg(long, requires = "instruct")]
    single_bos: bool,
    /// Singular values: dense (SVD of the gradient, the paper's way), factored (exact, from the
    /// gradient's low-rank factors G = Δᵀ X), auto (whichever is cheaper for the matrix and the
    /// sample's length), or gram (factored, its QRs by CholeskyQR where the factors are: for GPUs).
    #[arg(long, default_value_t = gradlens::spectra::stats::Spectra::default())]
    spectra: gradlens::spectra::stats::Spectra,
}

impl ModelArgs {
    /// The run's options: the checkpoint directory (a hub id or GGUF file resolved), the prompt
    /// mode, and the rest as given.
    fn resolve(&self) -> Result<RunOptions> {
        let model = gradlens::load::model::resolve(&self.model, self.revision.as_deref())?;
        let mode = if self.instruct {
            PromptMode::instruct_from_dir(
                &model,
                InstructOptions {
                    add_special_tokens: !self.single_bos,
                },
            )?
        } else {
            PromptMode::Base
        };
        Ok(RunOptions {
            max_length: self.max_length,
            dtype: self.dtype,
            backend: self.backend,
            mode,
            spectra: self.spectra,
            ..RunOptions::new(model)
        })
    }
}

#[derive(clap::Args)]
struct GradsArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Data file: a JSON array of {instruction, input, output} records.
    #[arg(long)]
    data: PathBuf,
    /// Output JSONL; samples already in it (or in <out>.skipped.jsonl) are not measured again.
    #[arg(long)]
    out: PathBuf,
    /// A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors; e.g. a
    /// `gradlens train --lora` run's final/) merged into the model on load.
    #[arg(long, value_name = "ADAPTER_DIR")]
    adapter: Option<PathBuf>,
    /// Measure at most N records (from --start); N ≥ 1.
    #[arg(long, value_parser = parse_count)]
    limit: Option<usize>,
    /// Index of the first record to measure.
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Also write every singular value (above 1e-12·σ_max) to <out>.spectrum.jsonl.
    #[arg(long)]
    save_spectrum: bool,
    /// Pad each sequence with trailing tokens to a multiple of N (the loss and the gradients are
    /// unchanged: causal attention hides the padding, which carries no loss). Default: 64 on CUDA
    /// (fewer distinct shapes to compile kernels for), 1 (none) on the CPU.
    #[arg(long)]
    pad_to: Option<usize>,
    /// Measure again the samples recorded in <out>.skipped.jsonl (e.g. after fixing the
    /// checkpoint that gave them a non-finite loss).
    #[arg(long)]
    retry_skipped: bool,
    /// Plan for this much memory (e.g. 64G) instead of what the machine has available: the run
    /// refuses a model and --max-length whose estimate exceeds it.
    #[arg(long, value_parser = gradlens::measure::resources::parse_size)]
    max_memory: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct TrainArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Training data: JSON arrays of {instruction, input, output} records; several files are read
    /// one after the other (sample indices run on across them).
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// The run directory (steps.jsonl, per_sample.jsonl, eval.jsonl, checkpoint-N/, final/).
    #[arg(long)]
    out: PathBuf,
    /// Samples per optimizer step (the next usable ones in data order, wrapping at the end).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Optimizer steps.
    #[arg(long, conflicts_with = "epochs", required_unless_present = "epochs")]
    steps: Option<usize>,
    /// Passes over the usable samples (steps = ceil(epochs × samples / batch size)).
    #[arg(long)]
    epochs: Option<f64>,
    /// Shuffle the samples of each epoch (reproducibly, from --seed).
    #[arg(long)]
    shuffle: bool,
    /// Seed of the shuffle and of LoRA's initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// attention (default): the paper's selection (2-D weights that are square or in
    /// self_attn); all: every parameter. Not with --lora (the adapters are what trains).
    #[arg(long, value_enum, conflicts_with_all = ["lora", "lora_init"])]
    train: Option<gradlens::train::TrainSet>,
    /// LoRA of rank R (PEFT's LoraConfig): only the adapters train; y = W x + (α/r)·B(A x), A
    /// initialised as PEFT does (from --seed), B zero. Checkpoints are PEFT adapter folders.
    #[arg(long, value_name = "R")]
    lora: Option<usize>,
    /// LoRA's α (default 8, PEFT's default).
    #[arg(long, value_name = "A")]
    lora_alpha: Option<f64>,
    /// The layers that get adapters, by module name (default q_proj,k_proj,v_proj,o_proj).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    lora_targets: Option<Vec<String>>,
    /// LoRA dropout (only 0 is implemented).
    #[arg(long, value_name = "P")]
    lora_dropout: Option<f64>,
    /// rsLoRA: scale α/√r instead of α/r.
    #[arg(long)]
    use_rslora: bool,
    /// Start from a PEFT adapter folder (adapter_config.json gives r, lora_alpha, target_modules).
    #[arg(long, value_name = "ADAPTER_DIR")]
    lora_init: Option<PathBuf>,
    /// With --lora: also write the merged model as a Hugging Face checkpoint (final-merged/).
    #[arg(long)]
    save_merged: bool,
    /// Plan for this much memory (e.g. 64G) instead of what the machine has available.
    #[arg(long, value_parser = gradlens::measure::resources::parse_size)]
    max_memory: Option<u64>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    /// After the warmup: constant, linear (down to 0) or cosine (down to 0), as transformers'
    /// get_*_schedule_with_warmup.
    #[arg(long, value_enum, default_value_t = gradlens::train::schedule::Schedule::Linear)]
    schedule: gradlens::train::schedule::Schedule,
    /// Linear warmup steps (the first update then uses rate 0, as transformers' Trainer).
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Decoupled weight decay on parameters of 2 or more dimensions.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the batch gradient's norm to this (0: off), as torch's clip_grad_norm_.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// What each step records: batch (the paper's statistics of the batch gradient, in
    /// steps.jsonl) or none (a plain loop: loss, learning rate and gradient norm only).
    #[arg(long, value_enum, default_value_t = gradlens::train::StepStats::Batch)]
    stats: gradlens::train::StepStats,
    /// Also write each sample's own statistics at each step (per_sample.jsonl).
    #[arg(long)]
    per_sample: bool,
    /// Evaluation data: its token-weighted loss goes to eval.jsonl at step 0, every
    /// --eval-every steps and at the end.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    #[arg(long, requires = "eval_data")]
    eval_every: Option<usize>,
    /// Write checkpoint-N/ every N steps (a Hugging Face checkpoint plus the optimizer state).
    #[arg(long)]
    save_every: Option<usize>,
    /// Dtype of saved weights (default: the source checkpoint's).
    #[arg(long, value_enum)]
    save_dtype: Option<gradlens::train::checkpoint::SaveDtype>,
    /// Continue the run in --out from its newest checkpoint (same options required).
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// A relative tolerance: a finite number ≥ 0.
fn parse_rtol(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{s:?}: expected a number ≥ 0, e.g. 1e-4")),
    }
}

/// A count of things to do: a whole number ≥ 1 (0 would ask for nothing).
fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err(
            "0 asks for nothing: expected a whole number ≥ 1 (leave the option out \
                      for all records)"
                .into(),
        ),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?}: expected a whole number ≥ 1")),
    }
}

fn main() -> ExitCode {
    gradlens::backend::tune_allocator();
    gradlens::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", gradlens::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Grads(a) => {
            let opts = GradsOptions {
                run: RunOptions {
                    adapter: a.adapter,
                    pad_to: a.pad_to,
                    max_memory: a.max_memory,
                    ..a.m.resolve()?
                },
                data: a.data,
                out: a.out,
                start: a.start,
                limit: a.limit,
                save_spectrum: a.save_spectrum,
                retry_skipped: a.retry_skipped,
                progress: !a.quiet && std::io::stderr().is_terminal(),
            };
            let summary = run_grads(&opts)?;
            eprintln!("{}", summary.line(&opts.out));
            Ok(())
        }
        Command::Train(a) => {
            use gradlens::train::{Length, TrainOptions, optimizer::AdamWConfig};
            let opts = TrainOptions {
                run: RunOptions {
                    max_memory: a.max_memory,
                    ..a.m.resolve()?
                },
                data: a.data,
                out: a.out,
                batch_size: a.batch_size,
                length: match (a.steps, a.epochs) {
                    (Some(n), _) => Length::Steps(n),
                    (None, Some(e)) => Length::Epochs(e),
                    (None, None) => unreachable!("clap requires one"),
                },
                shuffle: a.shuffle.then_some(a.seed),
                seed: a.seed,
                train: a.train.unwrap_or_default(),
                lora: (a.lora.is_some()
                    || a.lora_init.is_some()
                    || a.lora_alpha.is_some()
                    || a.lora_targets.is_some()
                    || a.lora_dropout.is_some()
                    || a.use_rslora)
                    .then(|| gradlens::train::lora::LoraArgs {
                        r: a.lora,
                        alpha: a.lora_alpha,
                        targets: a.lora_targets.clone(),
                        dropout: a.lora_dropout,
                        rslora: a.use_rslora,
                        init: a.lora_init.clone(),
                    }),
                save_merged: a.save_merged,
                lr: a.lr,
                schedule: a.schedule,
                warmup_steps: a.warmup_steps,
                adamw: AdamWConfig {
                    beta1: a.beta1,
                    beta2: a.beta2,
                    eps: a.eps,
                    weight_decay: a.weight_decay,
                },
                max_grad_norm: a.max_grad_norm,
                stats: a.stats,
                per_sample: a.per_sample,
                eval_data: a.eval_data,
                eval_every: a.eval_every,
                save_every: a.save_every,
                save_dtype: a.save_dtype,
                resume: a.resume,
                progress: !a.quiet && std::io::stderr().is_terminal(),
            };
            let summary = gradlens::train::run_train(&opts)?;
            eprintln!("{}", summary.paragraph());
            if summary.stopped {
                // 128 + SIGTERM, as a process the signal ended: a batch script sees the run is not
                // complete.
                std::process::exit(143);
            }
            Ok(())
        }
        Command::Report(a) => gradlens::commands::report::run(&a),
        Command::Init {
            config,
            seed,
            out,
            dtype,
            tokenizer,
            force,
        } => {
            let t0 = std::time::Instant::now();
            let s = gradlens::commands::init::init_checkpoint(
                &gradlens::commands::init::InitOptions {
                    config,
                    out,
                    seed,
                    dtype,
                    tokenizer,
                    force,
                },
            )?;
            eprintln!(
                "{}: {} checkpoint, {} tensors, {:.3} B parameters, {:.2} GB, in {:.1} s",
                s.path.display(),
                s.model_type,
                s.tensors,
                s.parameters as f64 / 1e9,
                s.bytes as f64 / 1e9,
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Check {
            fixtures,
            paper_data,
            backend,
            dtype,
            rtol,
            pad_to,
        } => {
            let rtol = rtol.unwrap_or(match dtype {
                Dtype::F32 => 1e-4,
                Dtype::F64 => 1e-9,
            });
            let checks =
                gradlens::commands::check::check_fixtures(&gradlens::commands::check::CheckArgs {
                    fixtures,
                    paper_data: paper_data.is_dir().then_some(paper_data),
                    backend,
                    dtype,
                    rtol,
                    pad_to,
                })?;
            let bad = checks.iter().filter(|c| !c.errors.is_empty()).count();
            let worst = checks
                .iter()
                .filter_map(|c| c.deviation)
                .fold(0.0f64, f64::max);
            println!(
                "parity on {backend} {dtype} at rtol {rtol:e}: {}/{} comparisons agree \
                 (largest relative deviation {worst:.1e})",
                checks.len() - bad,
                checks.len()
            );
            for c in checks.iter().filter(|c| !c.errors.is_empty()) {
                for e in c.errors.iter().take(5) {
                    println!("  {} {} {:?}: {e}", c.fixture, c.data, c.spectra);
                }
            }
            anyhow::ensure!(bad == 0, "{bad} comparison(s) differ");
            Ok(())
        }
        Command::Bench(args) => {
            // Before any thread pool starts (faer's and NdArray's rayon pool, LibTorch's).
            // SAFETY: single-threaded at this point.
            #[allow(unsafe_code)]
            unsafe {
                gradlens::backend::limit_cpu_threads(args.threads);
            }
            gradlens::commands::bench::run(&args, &std::env::current_dir()?)?;
            Ok(())
        }
        Command::ImportGguf { file, out } => {
            anyhow::ensure!(
                !out.exists(),
                "{}: exists; import-gguf writes a new checkpoint directory (choose another --out)",
                out.display()
            );
            let r = gradlens::import_gguf(&file, &out)?;
            let types: Vec<String> = r.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
            eprintln!(
                "{}: {} ({} tensors: {}; {:.1} M parameters) -> {}",
                file.display(),
                r.architecture,
                r.tensors,
                types.join(", "),
                r.parameters as f64 / 1e6,
                out.display()
            );
            Ok(())
        }
        Command::Models => {
            println!("model_type");
            for t in gradlens::SUPPORTED {
                println!("{t}");
            }
            println!(
                "(also: multimodal Gemma 3 checkpoints, model_type gemma3, measured by their text \
                 model; with --instruct the checkpoint's chat template decides whether the prompt \
                 has a system turn)"
            );
            Ok(())
        }
        Command::Compare {
            expected,
            actual,
            rtol,
        } => {
            let errs = gradlens::report::compare::compare_files(&expected, &actual, rtol)?;
            let n = gradlens::report::compare::read_jsonl_by_index(&expected)?.len();
            if n == 0 && errs.is_empty() {
                anyhow::bail!(
                    "{} and {}: neither holds a sample line: nothing to compare",
                    expected.display(),
                    actual.display()
                );
            }
            if errs.is_empty() {
                println!("{n} sample(s) agree within rtol {rtol:e}");
                Ok(())
            } else {
                for e in errs.iter().take(20) {
                    println!("{e}");
                }
                anyhow::bail!("{} difference(s) beyond rtol {rtol:e}", errs.len())
            }
        }
    }
}
