//! `cargo run --example fake-telegram -- --scenario FILE --state-dir DIR [--log FILE]
//! [--config-extra TOML]`
//!
//! Serves a scenario as a fake Telegram data center on 127.0.0.1 (a free port), after writing
//! into DIR a session aimed at it, `state.json` with the scenario's tracked users and
//! `config.toml` with dummy API credentials, then waits for SIGTERM or ctrl-c. The request log
//! goes to FILE (default DIR/fake-telegram.jsonl). The scenario format is documented in
//! `tests/fake_telegram/mod.rs`.

#[path = "mod.rs"]
mod fake_telegram;

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: fake-telegram --scenario FILE --state-dir DIR [--log FILE] [--config-extra TOML]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut scenario = None;
    let mut state_dir = None;
    let mut log = None;
    let mut extra = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next();
        match arg.as_str() {
            "--scenario" => scenario = value().map(PathBuf::from),
            "--state-dir" => state_dir = value().map(PathBuf::from),
            "--log" => log = value().map(PathBuf::from),
            "--config-extra" => extra = value().unwrap_or_default(),
            "-h" | "--help" => return usage(),
            _ => {
                eprintln!("unknown argument {arg}");
                return usage();
            }
        }
    }
    let (Some(scenario), Some(state_dir)) = (scenario, state_dir) else {
        return usage();
    };
    let scenario = match fake_telegram::Scenario::load(&scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        eprintln!("error: {}: {e}", state_dir.display());
        return ExitCode::FAILURE;
    }
    let log = log.unwrap_or_else(|| state_dir.join("fake-telegram.jsonl"));
    let dc = match fake_telegram::FakeDc::start(scenario, Some(&log)) {
        Ok(dc) => dc,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match dc.write_state_dir(&state_dir, &extra) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("fake Telegram data center listening on {}", dc.addr);
    println!("request log: {}", log.display());
    println!(
        "run: voice-transcriber --state-dir {} --config {} run",
        state_dir.display(),
        config.display()
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    println!("stopping");
    drop(dc);
    ExitCode::SUCCESS
}
