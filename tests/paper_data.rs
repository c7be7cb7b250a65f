//! The paper's own data (../shared/paper-data, or $GRADLENS_DATA): every file parses. (Parity on
//! its first samples is in `parity.rs`, per fixture.)

use gradlens::load::data::load_records;
use gradlens_tests::paper_data;
use std::path::Path;

fn json_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

#[test]
#[cfg_attr(
    not(paper_data),
    ignore = "needs the paper's data: GRADLENS_DATA=DIR, or ../shared/paper-data beside the checkout (then rebuild the tests)"
)]
fn every_paper_data_file_parses() {
    let Some(root) = paper_data() else { return };
    let mut files = Vec::new();
    json_files(&root, &mut files);
    assert_eq!(files.len(), 56, "the paper publishes 56 data files");
    for f in files {
        let records = load_records(&f).unwrap_or_else(|e| panic!("{e}"));
        let wiki_long_tail = f.file_name().unwrap() == "long_tail_wikipedia.json";
        assert_eq!(
            records.len(),
            if wiki_long_tail { 454 } else { 500 },
            "{}",
            f.display()
        );
        assert!(
            records.iter().all(|r| !r.instruction.is_empty()),
            "{}",
            f.display()
        );
    }
}
