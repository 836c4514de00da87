//! `--threads N` means N compute threads, never more: this counts the threads of this process
//! that actually burn CPU during a transcription (from `/proc/self/task/*/stat`). The workers
//! live for one call, so they are counted from inside it, when the last segment is reported. It
//! is the only test in its binary so no other test's threads are counted.

mod common;

use std::collections::HashMap;

use voice_transcriber::whisper::audio;
use voice_transcriber::whisper::decode::Options;
use voice_transcriber::whisper::engine::{limit_process_threads, Engine, ThreadConfig};

/// CPU ticks (user + system) of every thread of this process, by thread id.
fn thread_ticks() -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        out.insert(
            tid,
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap(),
        );
    }
    out
}

fn current_tid() -> u32 {
    nix::unistd::gettid().as_raw() as u32
}

#[test]
fn inference_uses_exactly_the_configured_threads_and_not_the_callers() {
    let samples =
        audio::decode_file(&common::root().join("tests/data/audio_jfk_ask_not.ogg")).unwrap();
    let caller = current_tid();
    for n in [1usize, 2] {
        limit_process_threads(n);
        let threads = ThreadConfig {
            threads: n,
            cores: Vec::new(),
            nice: 0,
        };
        let mut engine = Engine::load(&common::model_dir("tiny.en"), "tiny.en", threads).unwrap();
        let before = thread_ticks();
        let caller_before = before[&caller];
        let mut during = None;
        let t = engine
            .transcribe(&samples, &Options::default(), |_| {
                during = Some(thread_ticks())
            })
            .unwrap();
        assert!(t.transcript.text().to_lowercase().contains("ask not"));
        let mut after = during.expect("a segment was reported");
        after.insert(caller, thread_ticks()[&caller]);
        // Threads that did at least 3 ticks (30 ms) of work during the transcription.
        let busy: Vec<u32> = after
            .iter()
            .filter(|(tid, &ticks)| ticks >= before.get(tid).copied().unwrap_or(0) + 3)
            .map(|(tid, _)| *tid)
            .collect();
        assert!(
            !busy.contains(&caller),
            "the calling thread must only wait (n = {n})"
        );
        assert!(after[&caller] <= caller_before + 2);
        assert_eq!(busy.len(), n, "busy threads with --threads {n}: {busy:?}");
        drop(engine);
    }
}
