//! Structural rules that keep the code shaped as ARCHITECTURE.md says.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn policy_is_free_of_hyper_http_and_tower() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/policy"), &mut files);
    assert!(files.len() >= 8, "policy modules found: {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for banned in ["hyper::", "hyper_util::", "http::", "tower::", "use hyper", "use http", "use tower"] {
            assert!(!text.contains(banned), "{} uses {banned}", f.display());
        }
    }
}
