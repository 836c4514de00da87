//! `voice-transcriber`: the command-line entry point. Everything happens in [`cli`].

mod cli;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    cli::run()
}
