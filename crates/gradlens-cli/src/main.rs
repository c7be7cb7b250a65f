//! The `gradlens` command line.

/// Large tensors are allocated and freed on every op: mimalloc reuses their pages where the system
/// allocator returns them to the kernel and page-faults them back (measured in docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use gradlens::backend::Dtype;
use gradlens::grads::{GradsOptions, run_grads};
use gradlens::sample::{InstructOptions, PromptMode};
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
    /// Curves, MAD tables, figures and report.md/html from measurement JSONL.
    Report {
        /// Folders (searched recursively) or JSONL files.
        #[arg(long = "in", required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Output folder (default: <first input>/report).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare two measurement JSONL files (e.g. against the transformers reference).
    Compare {
        /// The reference JSONL.
        #[arg(long)]
        expected: PathBuf,
        /// The JSONL to check.
        #[arg(long)]
        actual: PathBuf,
        /// Relative tolerance (see the README for the rule per statistic).
        #[arg(long, default_value_t = 1e-9)]
        rtol: f64,
    },
}

#[derive(clap::Args)]
struct GradsArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Data file: a JSON array of {instruction, input, output} records.
    #[arg(long)]
    data: PathBuf,
    /// Output JSONL; samples already in it (or in <out>.skipped.jsonl) are not measured again.
    #[arg(long)]
    out: PathBuf,
    /// Measure at most N records (from --start).
    #[arg(long)]
    limit: Option<usize>,
    /// Index of the first record to measure.
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Truncate each sample to this many tokens.
    #[arg(long, default_value_t = 1024)]
    max_length: usize,
    /// Compute dtype: f32 (as the paper) or f64 (reference precision).
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Instruct model: render the checkpoint's chat template (system "You are a helpful
    /// assistant." — none for Gemma families — and the instruction as user turn), then the output.
    #[arg(long)]
    instruct: bool,
    /// With --instruct: tokenise the rendered text without adding special tokens again, so a
    /// template that starts with BOS gives one BOS (the paper's way, the default, gives two).
    #[arg(long, requires = "instruct")]
    single_bos: bool,
    /// Singular values: dense (SVD of the gradient, the paper's way), factored (exact, from the
    /// gradient's low-rank factors G = Δᵀ X), or auto (factored when the sample has fewer tokens
    /// than the matrix's smaller side).
    #[arg(long, default_value = "auto")]
    spectra: gradlens::stats::Spectra,
    /// Also write every singular value (above 1e-12·σ_max) to <out>.spectrum.jsonl.
    #[arg(long)]
    save_spectrum: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Grads(a) => {
            let opts = GradsOptions {
                model: a.model.clone(),
                data: a.data,
                out: a.out,
                start: a.start,
                limit: a.limit,
                max_length: a.max_length,
                dtype: a.dtype,
                mode: if a.instruct {
                    PromptMode::instruct_from_dir(
                        &a.model,
                        InstructOptions {
                            add_special_tokens: !a.single_bos,
                        },
                    )?
                } else {
                    PromptMode::Base
                },
                spectra: a.spectra,
                save_spectrum: a.save_spectrum,
                progress: !a.quiet && std::io::stderr().is_terminal(),
            };
            let summary = run_grads(&opts)?;
            eprintln!("{}", summary.line(&opts.out));
            Ok(())
        }
        Command::Report { inputs, out } => {
            let out = out.unwrap_or_else(|| inputs[0].join("report"));
            gradlens::reporting::build_and_print(&inputs, &out)?;
            Ok(())
        }
        Command::Compare {
            expected,
            actual,
            rtol,
        } => {
            let errs = gradlens::compare::compare_files(&expected, &actual, rtol)?;
            let n = gradlens::compare::read_jsonl_by_index(&expected)?.len();
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
