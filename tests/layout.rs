//! The layout is part of the design: the Whisper engine (`src/whisper/`) is a library of its own
//! that knows nothing of the daemon, and `src/telegram/` is the only place that knows grammers.
//! Both are promises a later change could break without any other test noticing, so they are
//! checked here against the source itself.

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Code lines (comments dropped) with their file and line number.
fn code_lines(files: &[PathBuf]) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    for f in files {
        let text = fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("").trim();
            if !code.is_empty() {
                out.push((f.display().to_string(), i + 1, code.to_string()));
            }
        }
    }
    out
}

/// The `crate::NAME` paths a line reaches into, by their first segment.
fn crate_paths(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .filter(|(i, _)| {
            // A word that merely ends in "crate" is no path.
            *i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric()
        })
        .map(|(i, m)| {
            let rest = &line[i + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_whisper_engine_never_reaches_into_the_daemon_side() {
    let files = rust_files(&src().join("whisper"));
    assert!(files.len() >= 10, "the engine wing looks empty: {files:?}");
    let mut bad = Vec::new();
    for (file, n, line) in code_lines(&files) {
        if crate_paths(&line).iter().any(|first| *first != "whisper") {
            bad.push(format!("{file}:{n}: {line}"));
        }
        // Crates only the daemon side uses: the network runtime and the Telegram client.
        if ["tokio", "grammers"].iter().any(|dep| line.contains(dep)) {
            bad.push(format!("{file}:{n}: {line}"));
        }
    }
    assert!(
        bad.is_empty(),
        "src/whisper/ must stand alone (only crate::whisper paths, no daemon crates):\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_telegram_room_knows_grammers() {
    let telegram = src().join("telegram");
    let others: Vec<PathBuf> = rust_files(&src())
        .into_iter()
        .filter(|f| !f.starts_with(&telegram))
        .collect();
    let bad: Vec<String> = code_lines(&others)
        .into_iter()
        .filter(|(_, _, line)| line.contains("grammers"))
        .map(|(f, n, line)| format!("{f}:{n}: {line}"))
        .collect();
    assert!(
        bad.is_empty(),
        "grammers outside src/telegram/:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_path_finder_sees_what_it_must_reject() {
    // The guard above is only as good as its parser: a daemon path must be found, an engine
    // path and a word that merely ends in "crate" must not be.
    assert_eq!(
        crate_paths("use crate::daemon::spool::Spool;"),
        vec!["daemon"]
    );
    assert_eq!(
        crate_paths("let x = crate::whisper::mel::N_FRAMES + crate::telegram::X;"),
        vec!["whisper", "telegram"]
    );
    assert!(crate_paths("let subcrate::x = 1;").is_empty());
}
