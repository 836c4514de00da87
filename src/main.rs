//! `voice-transcriber`: the command-line entry point. Everything happens in [`cli`]. Logging
//! defaults to our own `info` lines and other crates' warnings (`RUST_LOG` overrides).

mod cli;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,voice_transcriber=info"),
    )
    .init();
    cli::run()
}
