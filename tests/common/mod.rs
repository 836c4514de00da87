//! Shared helpers for integration tests: where the real models and the shared speech live.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Crate root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A real model assembled by `models/fetch-offline.sh` (which CI runs first).
pub fn model_dir(name: &str) -> PathBuf {
    let dir = root().join("models/cache").join(name);
    assert!(
        dir.join("model.bin").is_file(),
        "{} is missing: run `NO_INSTALL=1 models/fetch-offline.sh` first",
        dir.display()
    );
    dir
}

/// The shared evaluation set (`../shared/eval`).
pub fn eval_dir() -> PathBuf {
    let dir = root().join("../shared/eval");
    assert!(
        dir.join("manifest.tsv").is_file(),
        "{} is missing: the shared speech set must sit beside the checkout",
        dir.display()
    );
    dir
}

/// Rows of a tab-separated file with a header, as maps from column name to value.
pub fn read_tsv(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let head: Vec<String> = lines
        .next()
        .unwrap()
        .split('\t')
        .map(String::from)
        .collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            head.iter()
                .cloned()
                .zip(l.split('\t').map(String::from))
                .collect()
        })
        .collect()
}

/// The release-or-debug binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voice-transcriber"))
}
