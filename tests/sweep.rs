//! Sweeps: the paper's grid is complete in the manifest, shards partition the work exactly, and
//! bad sweep files fail before any model is loaded.

use gradlens::commands::sweep::{Plan, check_complete, run};
use gradlens::load::datasets::Manifest;
use gradlens_tests::{paper_data, repo_root, scratch};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn plan_of(path: &Path, shards: usize) -> anyhow::Result<Plan> {
    let text = std::fs::read_to_string(path).unwrap();
    Plan::new(path, &text, path.parent().unwrap(), None, shards)
}

#[test]
#[cfg_attr(
    not(paper_data),
    ignore = "needs the paper's data: GRADLENS_DATA=DIR, or ../shared/paper-data beside the checkout (then rebuild the tests)"
)]
fn paper_smoke_covers_all_56_conditions_and_every_file_parses() {
    if paper_data().is_none() {
        return;
    }
    let manifest = Manifest::load(&repo_root().join("datasets/paper.toml")).unwrap();
    assert_eq!(manifest.conditions.len(), 56);
    // Plan::new checks every data file exists and parses.
    let path = repo_root().join("sweeps/paper-smoke.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let plan = Plan::new(
        &path,
        &text,
        path.parent().unwrap(),
        paper_data().as_deref(),
        1,
    )
    .unwrap();
    let ids: BTreeSet<_> = plan.units.iter().map(|u| u.condition.id.clone()).collect();
    let all: BTreeSet<_> = manifest.conditions.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, all);
    assert!(plan.units.iter().all(|u| u.samples == 5));
    // 6 reasoning sets × 3 CoT × 2 + 3 MATH × 2 × 2 + 4 wiki × 2
    let count = |g: &str| manifest.conditions.iter().filter(|c| c.group == g).count();
    assert_eq!(
        (count("reasoning"), count("math"), count("wiki")),
        (36, 12, 8)
    );
}

/// A small sweep over the built-in data into `out`.
fn small_sweep(dir: &Path, out: &str) -> std::path::PathBuf {
    let root = repo_root();
    let text = format!(
        r#"out = "{out}"
manifest = "{root}/datasets/builtin.toml"
conditions = ["builtin/arith/none/*", "builtin/arith/detailed/correct"]
samples = 4
max_length = 256
[[model]]
name = "base"
path = "{root}/fixtures/qwen2-tiny"
[[model]]
name = "it"
path = "{root}/fixtures/gemma-tiny"
mode = "instruct"
"#,
        root = root.display()
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Every output line of a sweep, keyed by (relative file, index).
fn lines_of(out: &Path) -> BTreeSet<(String, u64, String)> {
    let mut set = BTreeSet::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                let rel = p.strip_prefix(out).unwrap().display().to_string();
                for line in std::fs::read_to_string(&p).unwrap().lines() {
                    let v: Value = serde_json::from_str(line).unwrap();
                    let idx = v["index"].as_u64().unwrap();
                    assert!(
                        set.insert((rel.clone(), idx, line.to_string())),
                        "{rel}: sample {idx} twice"
                    );
                }
            }
        }
    }
    set
}

#[test]
fn shards_partition_the_work_and_union_to_the_unsharded_run() {
    let dir = scratch("sweep-shards");
    let whole = plan_of(&small_sweep(&dir, "whole"), 1).unwrap();
    run(&whole, None, false).unwrap();
    assert!(check_complete(&whole).unwrap().is_empty());

    let sharded_path = small_sweep(&dir, "sharded");
    for i in 1..=3 {
        let plan = plan_of(&sharded_path, 3).unwrap();
        if i < 3 {
            assert!(
                !check_complete(&plan).unwrap().is_empty(),
                "incomplete before the last shard"
            );
        }
        run(&plan, Some(i), false).unwrap();
        assert!(
            dir.join("sharded")
                .join(format!("run-shard-{i}-of-3.json"))
                .is_file()
        );
    }
    let plan = plan_of(&sharded_path, 3).unwrap();
    assert!(check_complete(&plan).unwrap().is_empty());
    let shards: BTreeSet<usize> = plan.units.iter().map(|u| u.shard).collect();
    assert_eq!(shards, BTreeSet::from([1, 2, 3]));
    let a = lines_of(&dir.join("whole"));
    let b = lines_of(&dir.join("sharded"));
    assert_eq!(a.len(), 2 * 3 * 4);
    assert_eq!(
        a, b,
        "shards 1/3, 2/3, 3/3 give the same lines as the unsharded run"
    );
    assert!(dir.join("whole/run.json").is_file());
}

fn plan_error(text: &str, dir: &Path) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    format!(
        "{:#}",
        Plan::new(
            &path,
            text,
            dir,
            Some(&repo_root().join("datasets/builtin")),
            1
        )
        .unwrap_err()
    )
}

#[test]
fn bad_sweeps_fail_before_any_model_is_loaded() {
    let dir = scratch("sweep-errors");
    let root = repo_root();
    let base = format!(
        "out = \"o\"\nmanifest = \"{}/datasets/builtin.toml\"\n",
        root.display()
    );
    let model = format!(
        "[[model]]\nname = \"m\"\npath = \"{}/fixtures/qwen2-tiny\"\n",
        root.display()
    );

    let e = plan_error(
        &format!("{base}conditions = [\"builtin/arith/tiny/correct\"]\n{model}"),
        &dir,
    );
    assert!(
        e.contains("no condition matches \"builtin/arith/tiny/correct\""),
        "{e}"
    );

    let e = plan_error(
        &format!(
            "{base}conditions = [\"builtin/*\"]\n[[model]]\nname = \"m\"\npath = \"/nonexistent/ckpt\"\n"
        ),
        &dir,
    );
    assert!(
        e.contains("model \"m\"") && e.contains("/nonexistent/ckpt"),
        "{e}"
    );

    // A manifest whose data is given at run time (as the paper's), copied from the built-in one.
    let empty = scratch("sweep-empty-root");
    let external = dir.join("external.toml");
    std::fs::write(
        &external,
        std::fs::read_to_string(root.join("datasets/builtin.toml"))
            .unwrap()
            .replace("data_root = \"builtin\"", "default_data_root = \"nowhere\""),
    )
    .unwrap();
    let text = format!(
        "out = \"o\"\nmanifest = \"{}\"\nconditions = [\"builtin/*\"]\n{model}",
        external.display()
    );
    let path = dir.join("bad.toml");
    std::fs::write(&path, &text).unwrap();
    let e = format!(
        "{:#}",
        Plan::new(&path, &text, &dir, Some(&empty), 1).unwrap_err()
    );
    assert!(
        e.contains("lacks 6 of the sweep's 6 file(s)")
            && e.contains("arith/arith_train_no_cot.json"),
        "{e}"
    );

    let e = plan_error(
        &format!("{base}conditions = [\"*\"]\nbackend = \"tpu\"\n{model}"),
        &dir,
    );
    assert!(e.contains("unknown backend \"tpu\""), "{e}");
}

/// The built-in data set ships with its manifest: a run's data root (`$GRADLENS_DATA`,
/// `--data-root`, the paper's data folder) does not move it, while the paper's manifest takes it.
#[test]
fn the_builtin_set_keeps_its_own_data_whatever_the_run_data_root() {
    let elsewhere = scratch("sweep-elsewhere-root");
    let path = repo_root().join("sweeps/default.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let plan = Plan::new(&path, &text, path.parent().unwrap(), Some(&elsewhere), 1).unwrap();
    assert_eq!(plan.data_root, repo_root().join("datasets/builtin"));
    assert!(plan.units.iter().all(|u| u.data.is_file()));
    assert_eq!(plan.units.len(), 12);

    // Both manifest keys at once: one clear error.
    let both = elsewhere.join("both.toml");
    std::fs::write(
        &both,
        "name = \"x\"\ndata_root = \"a\"\ndefault_data_root = \"b\"\ncondition = []\n",
    )
    .unwrap();
    let e = Manifest::load(&both).unwrap_err().to_string();
    assert!(
        e.contains("both.toml") && e.contains("data_root") && e.contains("default_data_root"),
        "{e}"
    );
}
