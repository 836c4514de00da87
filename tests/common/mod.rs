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

/// What the daemon's spool journal (`<state>/spool/journal.jsonl`) holds, replayed: the jobs
/// still waiting and the keys recorded as finished, each as (chat, message).
#[derive(Debug, Default)]
pub struct SpoolOnDisk {
    pub pending: Vec<(i64, i64)>,
    pub done: Vec<(i64, i64)>,
}

/// Reads the spool of the state directory `state` as the daemon would on start.
pub fn spool_on_disk(state: &Path) -> SpoolOnDisk {
    let text = std::fs::read_to_string(state.join("spool/journal.jsonl")).unwrap_or_default();
    let key = |v: &serde_json::Value| (v["chat"].as_i64().unwrap(), v["msg"].as_i64().unwrap());
    let mut out = SpoolOnDisk::default();
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(job) = record.get("job") {
            let k = key(&job["key"]);
            if !out.done.contains(&k) && !out.pending.contains(&k) {
                out.pending.push(k);
            }
        } else if let Some(k) = record.get("done") {
            let k = key(k);
            out.pending.retain(|p| *p != k);
            out.done.push(k);
        }
    }
    out
}
