//! `cargo xtask sweep` killed (SIGKILL) at several moments and rerun finishes with every
//! (model, condition, sample) exactly once; `--merge` then reports the sweep complete.

use gradlens_tests::{repo_root, scratch};
use std::process::{Command, Stdio};

#[test]
fn killed_sweep_resumes_with_every_sample_exactly_once() {
    let dir = scratch("sweep-kill");
    let root = repo_root();
    let sweep = dir.join("s.toml");
    std::fs::write(
        &sweep,
        format!(
            "out = \"out\"\nmanifest = \"{r}/datasets/builtin.toml\"\nconditions = [\"builtin/*\"]\nsamples = 40\nmax_length = 1024\n\
             [[model]]\nname = \"base\"\npath = \"{r}/fixtures/qwen2-tiny\"\n[[model]]\nname = \"it\"\npath = \"{r}/fixtures/qwen2-tiny\"\nmode = \"instruct\"\n",
            r = root.display()
        ),
    )
    .unwrap();
    let xtask = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
        c.args(["sweep", "--quiet", "--config"]).arg(&sweep);
        c
    };
    let count = || -> usize {
        let mut n = 0;
        for f in walk(&dir.join("out")) {
            n += std::fs::read_to_string(f).unwrap().lines().count();
        }
        n
    };
    let mut seen = Vec::new();
    for ms in [300u64, 900, 1600] {
        let mut child = xtask()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        seen.push(count());
    }
    assert!(
        seen[0] < 480,
        "the first kill came after the sweep had finished: {seen:?}"
    );
    let done = xtask().output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let merge = xtask().arg("--merge").output().unwrap();
    assert!(
        merge.status.success(),
        "{}",
        String::from_utf8_lossy(&merge.stdout)
    );
    assert!(String::from_utf8_lossy(&merge.stdout).contains("complete: all 12 work unit(s)"));
    // exactly once: 12 files × 40 samples, no index twice
    let mut total = 0;
    for f in walk(&dir.join("out")) {
        let mut idx: Vec<u64> = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["index"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        let n = idx.len();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), n, "{}: an index twice", f.display());
        total += n;
    }
    assert_eq!(total, 12 * 40);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "jsonl") {
            out.push(p);
        }
    }
    out
}
