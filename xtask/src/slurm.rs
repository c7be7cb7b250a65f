//! `cargo xtask sweep --slurm N`: the sweep as a Slurm job array of N tasks, each running one
//! shard (`--shard I/N`) with a prebuilt binary copied beside the job script, so that no task
//! compiles and a later rebuild does not change a running array.
//!
//! Everything lands in `<out>/slurm/`: `<name>.sbatch` (the job script), `xtask` (the binary the
//! tasks run), `%A_%a.log` (each task's log) and `jobs.json` (every submission: job id, array,
//! time). `--wait` follows the array until it has left the queue, then merges: exit 0 only when
//! every unit is complete. `--only-unfinished` submits only the array indices whose shards still
//! have unfinished units.

use anyhow::{Context, Result, bail};
use gradlens::commands::sweep::{Plan, check_complete};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The Slurm options of `cargo xtask sweep`.
#[derive(Debug, Clone, Default)]
pub struct SlurmArgs {
    /// Array tasks (= shards).
    pub tasks: usize,
    pub throttle: Option<usize>,
    /// sbatch options given on the command line (after the sweep file's `[slurm]`).
    pub options: Vec<String>,
    pub wait: bool,
    pub only_unfinished: bool,
    pub script_only: bool,
    /// The binary the tasks run; default: `cargo build --release -p xtask` once, here.
    pub binary: Option<PathBuf>,
}

/// What the task command line carries over from this one.
pub struct TaskOptions<'a> {
    /// `--config` as given (absolute in the script); `None`: the embedded default sweep.
    pub config: Option<&'a Path>,
    pub data_root: Option<&'a Path>,
    pub max_memory: Option<u64>,
    pub retry_skipped: bool,
}

/// One submission, as `jobs.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: String,
    /// sbatch's `--array` (0-based task ids; task i runs shard i + 1).
    pub array: String,
    pub shards: usize,
    pub script: PathBuf,
    pub submitted_unix: u64,
}

/// The file of the submissions of a sweep whose output is `out`.
pub fn jobs_file(out: &Path) -> PathBuf {
    out.join("slurm").join("jobs.json")
}

/// The submissions recorded for `out` (none when the sweep never went to Slurm).
pub fn submissions(out: &Path) -> Result<Vec<Submission>> {
    let path = jobs_file(out);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{}: not a gradlens jobs record", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
}

/// `0-3`, `1,3-5`: sbatch's array list of sorted ids.
pub fn array_spec(ids: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

fn quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,%+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// The binary the array tasks run, copied into `<out>/slurm/xtask`.
fn prepare_binary(args: &SlurmArgs, slurm_dir: &Path, repo: &Path) -> Result<PathBuf> {
    let source = match &args.binary {
        Some(b) => b.clone(),
        None => {
            eprintln!("building the release binary once (the array tasks compile nothing)");
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "-p", "xtask"])
                .current_dir(repo)
                .status()
                .context("running cargo build --release -p xtask")?;
            if !status.success() {
                bail!("cargo build --release -p xtask failed");
            }
            repo.join("target/release/xtask")
        }
    };
    let target = slurm_dir.join("xtask");
    let tmp = slurm_dir.join(".xtask.copy");
    std::fs::copy(&source, &tmp)
        .with_context(|| format!("{}: cannot copy to {}", source.display(), tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("{}", target.display()))?;
    Ok(target)
}

/// Submit (or write, with `--slurm-script-only`) the sweep's job array; with `--wait`, follow it
/// and return whether every unit is complete afterwards (`Ok(true)` when there was nothing to do).
pub fn submit(plan: &Plan, args: &SlurmArgs, task: &TaskOptions<'_>, repo: &Path) -> Result<()> {
    if args.tasks == 0 {
        bail!("--slurm 0: expected a number of array tasks ≥ 1");
    }
    let defaults = plan.sweep.slurm.clone().unwrap_or_default();
    let throttle = args.throttle.or(defaults.throttle);
    if throttle == Some(0) {
        bail!("--slurm-throttle 0: expected at least 1 task at a time");
    }
    let ids: Vec<usize> = if args.only_unfinished {
        let mut shards: Vec<usize> = check_complete(plan)?
            .into_iter()
            .map(|(i, _)| plan.units[i].shard - 1)
            .collect();
        shards.sort();
        shards.dedup();
        if shards.is_empty() {
            println!(
                "every work unit of {} is complete: nothing to submit",
                plan.sweep_path.display()
            );
            return Ok(());
        }
        shards
    } else {
        (0..args.tasks).collect()
    };
    let slurm_dir = absolute(&plan.out)?.join("slurm");
    std::fs::create_dir_all(&slurm_dir)
        .with_context(|| format!("{}: cannot create", slurm_dir.display()))?;
    let binary = prepare_binary(args, &slurm_dir, repo)?;
    let name = task
        .config
        .and_then(|c| c.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "default".into());
    let array = match throttle {
        Some(k) => format!("{}%{k}", array_spec(&ids)),
        None => array_spec(&ids),
    };
    let mut directives = vec![
        format!("--job-name=gradlens-{name}"),
        format!("--array={array}"),
        format!("--output={}/%A_%a.log", slurm_dir.display()),
    ];
    directives.extend(defaults.partition.map(|p| format!("--partition={p}")));
    directives.extend(defaults.gres.map(|g| format!("--gres={g}")));
    directives.extend(defaults.time.map(|t| format!("--time={t}")));
    directives.extend(defaults.options);
    let mut command = vec![binary.display().to_string(), "sweep".into()];
    if let Some(c) = task.config {
        command.extend(["--config".into(), absolute(c)?.display().to_string()]);
    }
    command.push(format!(
        "--shard=$((SLURM_ARRAY_TASK_ID + 1))/{}",
        args.tasks
    ));
    command.extend(["--quiet".into(), "--no-report".into()]);
    if let Some(d) = task.data_root {
        command.extend(["--data-root".into(), absolute(d)?.display().to_string()]);
    }
    if let Some(m) = task.max_memory {
        command.extend(["--max-memory".into(), m.to_string()]);
    }
    if task.retry_skipped {
        command.push("--retry-skipped".into());
    }
    let mut script = String::from("#!/bin/bash\n");
    for d in &directives {
        script += &format!("#SBATCH {d}\n");
    }
    script += &format!(
        "# Written by `cargo xtask sweep --slurm {}`: array task i runs shard i+1 of {} with the\n\
         # binary copied beside this script (no task compiles). Resubmit what is unfinished with\n\
         # --slurm {} --only-unfinished.\n\
         set -euo pipefail\ncd {}\nexec {}\n",
        args.tasks,
        args.tasks,
        args.tasks,
        quote(&std::env::current_dir()?.display().to_string()),
        command
            .iter()
            .map(|c| if c.starts_with("--shard=") {
                c.clone()
            } else {
                quote(c)
            })
            .collect::<Vec<_>>()
            .join(" ")
    );
    let script_path = slurm_dir.join(format!("{name}.sbatch"));
    gradlens::sink::output::write_atomically(&script_path, script.as_bytes())?;
    if args.script_only {
        println!(
            "wrote {} (array {array}); submit it with: sbatch {}{}",
            script_path.display(),
            args.options
                .iter()
                .map(|o| format!("{} ", quote(o)))
                .collect::<String>(),
            script_path.display()
        );
        return Ok(());
    }
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(&args.options)
        .arg(&script_path)
        .output()
        .context("running sbatch (is Slurm installed here? --slurm-script-only writes the job script alone)")?;
    if !out.status.success() {
        bail!(
            "sbatch {} refused the job: {}",
            script_path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let job_id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    if job_id.is_empty() {
        bail!("sbatch printed no job id");
    }
    let mut jobs = submissions(&plan.out)?;
    jobs.push(Submission {
        job_id: job_id.clone(),
        array: array.clone(),
        shards: args.tasks,
        script: script_path.clone(),
        submitted_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    gradlens::sink::output::write_atomically(
        &jobs_file(&plan.out),
        (serde_json::to_string_pretty(&jobs)? + "\n").as_bytes(),
    )?;
    println!(
        "submitted job {job_id}: array {array} ({} task(s) of {} shards); follow it with \
         `squeue -j {job_id}` and `tail -f {}/{job_id}_*.log`",
        ids.len(),
        args.tasks,
        slurm_dir.display()
    );
    if args.wait {
        wait_for(&job_id)?;
    }
    Ok(())
}

/// Wait until job `job_id` (an array: all its tasks) has left the queue.
pub fn wait_for(job_id: &str) -> Result<()> {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-j", job_id, "-o", "%i %T"])
            .output()
            .context("running squeue")?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // An unknown job id (it left the queue and slurmctld forgot it) is an error of squeue.
        if text.is_empty() {
            eprintln!(
                "job {job_id} has left the queue ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let mut counts = std::collections::BTreeMap::new();
        for l in text.lines() {
            if let Some(state) = l.split_whitespace().nth(1) {
                *counts.entry(state.to_string()).or_insert(0) += 1;
            }
        }
        let now: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let now = now.join(", ");
        if now != last {
            eprintln!("job {job_id}: {now} ({:.0} s)", t0.elapsed().as_secs_f64());
            last = now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_compress_runs() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[3]), "3");
        assert_eq!(array_spec(&[0, 2, 3, 5]), "0,2-3,5");
    }

    #[test]
    fn quoting_leaves_plain_words() {
        assert_eq!(quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
