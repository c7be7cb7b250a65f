//! Reports: curves and MADs equal values computed independently (numpy, the paper's own way) on a
//! file in the paper's script format; figures are valid PNGs; bad inputs give clear messages.

use gradlens::report::rows::{Statistic, curves_per_projection, mad_segments, read_rows, segments};
use gradlens_tests::{fixture, scratch};
use serde_json::Value;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
}

#[test]
fn curves_and_mads_of_a_28_layer_paper_file_equal_numpy() {
    let (rows, notes) = read_rows(&fixture("report").join("paper28.jsonl")).unwrap();
    assert_eq!(
        rows.len(),
        6,
        "NaN lines read (NaN is not JSON, the paper's script writes it)"
    );
    assert!(notes.bad_lines.is_empty());
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("report").join("paper28_expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(segments(28).0, [0..7, 7..21, 21..28]);
    assert_eq!(segments(28).1, "paper");
    for stat in [
        Statistic::SSum,
        Statistic::SRatio,
        Statistic::FrobeniusNorm,
        Statistic::SSumOverLoss,
    ] {
        let got = curves_per_projection(&rows, stat);
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let e = &expected[stat.key()][p];
            let c = &got[p];
            assert_eq!(
                c.n as u64,
                e["n"].as_u64().unwrap(),
                "{} {p}: samples kept",
                stat.key()
            );
            for (l, (g, w)) in c
                .values
                .iter()
                .zip(e["curve"].as_array().unwrap())
                .enumerate()
            {
                assert!(
                    close(*g, w.as_f64().unwrap()),
                    "{} {p} layer {l}: {g} vs {w}",
                    stat.key()
                );
            }
            let (m, rule) = mad_segments(&c.values);
            assert_eq!(rule, "paper");
            for (k, w) in e["mad"].as_array().unwrap().iter().enumerate() {
                assert!(
                    close(m[k], w.as_f64().unwrap()),
                    "{} {p} MAD {k}: {} vs {w}",
                    stat.key(),
                    m[k]
                );
            }
        }
    }
    // NaN dropping is per projection: the row with one NaN in K is kept for Q.
    let c = curves_per_projection(&rows, Statistic::SSum);
    assert_eq!((c["q_proj"].n, c["k_proj"].n), (5, 4));
}

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&b[12..16], b"IHDR");
    (
        u32::from_be_bytes(b[16..20].try_into().unwrap()),
        u32::from_be_bytes(b[20..24].try_into().unwrap()),
    )
}

#[test]
fn report_of_a_sweep_layout_writes_tables_figures_and_documents() {
    let dir = scratch("report-build");
    // A sweep layout: two CoT levels of one data set, correct and irrelevant, for one model.
    let src = std::fs::read_to_string(fixture("report").join("paper28.jsonl")).unwrap();
    for (folder, stem) in [
        ("cot_500", "aqua_train_no_cot"),
        ("cot_500", "aqua_train_with_cot_gpt4o"),
        ("cot_500_wrong_answer_shuffle", "aqua_train_no_cot"),
    ] {
        let d = dir.join("in").join(folder).join("m28");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("grads_{stem}.jsonl")), &src).unwrap();
    }
    // A truncated last line in one file is reported and skipped, not fatal.
    let f = dir.join("in/cot_500/m28/grads_aqua_train_no_cot.jsonl");
    std::fs::write(&f, format!("{src}{{\"loss\": 1.0, \"model.layers.0")).unwrap();
    let out = dir.join("out");
    let r = gradlens::report::build(&[dir.join("in")], &out).unwrap();
    assert_eq!(r.files, 3);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("grads_aqua_train_no_cot.jsonl: line 7 skipped")),
        "{:?}",
        r.warnings
    );
    for f in ["curves.json", "mad.csv", "report.md", "report.html"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let mad = std::fs::read_to_string(out.join("mad.csv")).unwrap();
    assert!(mad.lines().any(
        |l| l.starts_with("m28,reasoning/aqua/none/correct,q_proj,S_sum,")
            && l.contains(",28,paper,5")
    ));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("m28 | AQuA | correct responses") && md.contains("| None CoT | Q |"),
        "{md}"
    );
    // The paper's figure (2 columns × 3 rows) and the correct-vs-irrelevant figure.
    let main = r
        .figures
        .iter()
        .find(|p| p.to_string_lossy().ends_with("m28__AQuA__correct.png"))
        .unwrap();
    assert_eq!(png_size(main), (2 * 480, 3 * 340 + 44));
    assert!(main.with_extension("svg").is_file());
    assert!(
        r.figures
            .iter()
            .any(|p| p.to_string_lossy().contains("correct_vs_irrelevant"))
    );
}

#[test]
fn clear_messages_for_bad_inputs() {
    let empty = scratch("report-empty");
    let e = format!(
        "{:#}",
        gradlens::report::build(std::slice::from_ref(&empty), &empty.join("out")).unwrap_err()
    );
    assert!(
        e.contains("no measurement JSONL found in") && e.contains("report-empty"),
        "{e}"
    );

    // One model, two depths: the odd file is left out with a message naming it.
    let dir = scratch("report-depths");
    let d = dir.join("in/cot_500/m");
    std::fs::create_dir_all(&d).unwrap();
    let src = std::fs::read_to_string(fixture("report").join("paper28.jsonl")).unwrap();
    std::fs::write(d.join("grads_aqua_train_no_cot.jsonl"), &src).unwrap();
    std::fs::write(d.join("grads_aqua_train_with_cot.jsonl"), &src).unwrap();
    let tiny = std::fs::read_to_string(fixture("qwen2-tiny").join("expected/grads.jsonl")).unwrap();
    std::fs::write(d.join("grads_aqua_train_with_cot_gpt4o.jsonl"), tiny).unwrap();
    let r = gradlens::report::build(&[dir.join("in")], &dir.join("out")).unwrap();
    assert_eq!(r.files, 2);
    assert!(
        r.warnings.iter().any(|w| w.contains("grads_aqua_train_with_cot_gpt4o.jsonl: 2 layers, but the other files of model \"m\" have 28")),
        "{:?}",
        r.warnings
    );
}

/// A `grads` output on its own (no sweep layout) is labelled from its record: the checkpoint's
/// name and the data file; a 2-layer model's early/middle/late MADs are "n/a"; `--shared-y` draws.
#[test]
fn a_standalone_output_is_labelled_from_its_record() {
    use gradlens::commands::grads::{GradsOptions, run_grads};
    use gradlens::measure::options::RunOptions;
    let dir = scratch("report-standalone");
    let out = dir.join("mine.jsonl");
    gradlens::sink::output::remove_output(&out);
    let run = RunOptions {
        max_length: 128,
        ..RunOptions::new(fixture("qwen2-tiny"))
    };
    run_grads(&GradsOptions {
        limit: Some(3),
        progress: false,
        ..GradsOptions::new(run, gradlens_tests::tiny_data(), &out)
    })
    .unwrap();
    for shared_y in [false, true] {
        let report = dir.join(format!("report-{shared_y}"));
        gradlens::report::build_and_print_with(
            std::slice::from_ref(&out),
            &report,
            &gradlens::report::ReportOptions { shared_y },
        )
        .unwrap();
        let md = std::fs::read_to_string(report.join("report.md")).unwrap();
        assert!(
            md.contains("qwen2-tiny"),
            "the checkpoint names the model: {md}"
        );
        assert!(
            md.contains("tiny"),
            "the data file names the condition: {md}"
        );
        assert!(md.contains("n/a"), "MAD parts of a 2-layer model: {md}");
        let csv = std::fs::read_to_string(report.join("mad.csv")).unwrap();
        assert!(
            csv.lines().nth(1).unwrap().starts_with("qwen2-tiny,"),
            "{csv}"
        );
    }
}
