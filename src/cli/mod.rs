//! Command line: argument parsing and the `transcribe` and `models` commands.
//!
//! This is the edge of the program: library errors become one-line `error:` messages here, and
//! the exit status is decided in exactly one place ([`run`]). In a multi-file `transcribe`, a
//! bad file is reported and counted while the others are still transcribed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use voice_transcriber::whisper::catalog::{self, Catalog};
use voice_transcriber::whisper::decode::{EncoderWindow, Options};
use voice_transcriber::whisper::engine::{limit_process_threads, Engine, ThreadConfig};
use voice_transcriber::whisper::output::{self, JsonRecord, OutputFormat};
use voice_transcriber::whisper::{audio, mel};

mod daemon;

/// Model used when none is named.
const DEFAULT_MODEL: &str = "tiny.en";

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Transcribes Telegram voice messages locally with Whisper"
)]
struct Cli {
    /// Configuration file [default: /etc/voice-transcriber/config.toml, if present].
    #[arg(long, short = 'c', global = true, env = "VOICE_TRANSCRIBER_CONFIG")]
    config: Option<PathBuf>,
    /// Directory holding installed models [default: <state dir>/models].
    #[arg(long, global = true, env = "VOICE_TRANSCRIBER_MODELS")]
    models_dir: Option<PathBuf>,
    /// State directory [default: $STATE_DIRECTORY, /var/lib/voice-transcriber as root,
    /// else ~/.local/state/voice-transcriber].
    #[arg(long, global = true, env = "VOICE_TRANSCRIBER_STATE")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Telegram daemon (what the systemd unit starts).
    Run,
    /// Log in to Telegram once, interactively; the session is saved in the state directory.
    Login,
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Transcribe audio files (OGG/Opus, WAV, MP3, FLAC, M4A/MP4).
    Transcribe(TranscribeArgs),
    /// List, download, import and locate models.
    #[command(subcommand)]
    Models(ModelsCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration and print it with secrets masked.
    Check,
}

#[derive(clap::Args, Debug)]
struct TranscribeArgs {
    /// Model name (see `models list`) or path to a model directory.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// Language code to force (e.g. en, ru), or `auto` to detect.
    #[arg(long, short, default_value = "auto")]
    language: String,
    /// Inference threads [default: all cores].
    #[arg(long, short)]
    threads: Option<usize>,
    /// Pin inference threads to these cores, e.g. `2,3` or `1-3`.
    #[arg(long, value_parser = parse_cores)]
    pin_cores: Option<Vec<usize>>,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "txt")]
    format: OutputFormat,
    /// Do not feed previous text back as a prompt (less prone to repetition loops).
    #[arg(long)]
    no_condition: bool,
    /// Run the encoder on a short window's audio plus this many seconds of padding, instead of
    /// the full 30 s window: faster on short recordings, but the text can differ.
    #[arg(long, value_name = "SECONDS")]
    encoder_margin: Option<f32>,
    /// Input files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Show known and installed models.
    List,
    /// Download a model from the Hugging Face Hub.
    Fetch {
        /// Model name.
        name: String,
    },
    /// Copy a model directory (faster-whisper, Hugging Face or GGUF) into the models directory.
    Import {
        /// Directory holding the model.
        dir: PathBuf,
        /// Name to install it under [default: the directory's name].
        #[arg(long)]
        name: Option<String>,
    },
    /// Quantize an installed model to GGUF, installed beside it as `<name>-<format>`.
    Quantize {
        /// Model name.
        name: String,
        /// Quantization format.
        #[arg(long, value_enum, default_value = "q8_0")]
        to: Quant,
    },
    /// Print the directory of an installed model.
    Path {
        /// Model name.
        name: String,
    },
}

/// Quantization formats offered by `models quantize`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[allow(non_camel_case_types)]
enum Quant {
    /// 8-bit, blocks of 32.
    #[value(name = "q8_0")]
    q8_0,
    /// 4-bit, blocks of 32.
    #[value(name = "q4_0")]
    q4_0,
    /// 4-bit k-quant, blocks of 256 (narrow layers fall back to q8_0).
    #[value(name = "q4_k")]
    q4_k,
}

impl Quant {
    fn dtype(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType;
        match self {
            Quant::q8_0 => GgmlDType::Q8_0,
            Quant::q4_0 => GgmlDType::Q4_0,
            Quant::q4_k => GgmlDType::Q4K,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Quant::q8_0 => "q8_0",
            Quant::q4_0 => "q4_0",
            Quant::q4_k => "q4_k",
        }
    }
}

/// `2,3` or `0-3` or `0,2-3`.
fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad core list {s:?}: expected e.g. 2,3 or 0-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cores.is_empty() {
        return Err("empty core list".into());
    }
    cores.sort_unstable();
    cores.dedup();
    Ok(cores)
}

/// The default state directory: systemd's `$STATE_DIRECTORY`, the system location as root,
/// else the user's XDG state home.
fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        return PathBuf::from(first);
    }
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/voice-transcriber");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".local/state"))
        .join("voice-transcriber")
}

impl Cli {
    /// Flags, then the config file (if it can be read), then defaults. Commands that do not
    /// need the daemon's configuration still honour its directories, but a broken config
    /// file only warns here.
    fn catalog(&self) -> Catalog {
        let config = daemon::load_config(self.config.as_deref()).unwrap_or_else(|e| {
            log::warn!("ignoring the configuration: {e}");
            voice_transcriber::daemon::config::Config::default()
        });
        self.places(config).catalog
    }

    fn places(&self, config: voice_transcriber::daemon::config::Config) -> daemon::Places {
        daemon::Places::resolve(
            config,
            self.state_dir.as_deref(),
            self.models_dir.as_deref(),
            default_state_dir,
        )
    }
}

/// Parses arguments, runs the command, and maps the outcome to the exit status.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The exit status: 0, 1 when an item failed, or a daemon status.
fn dispatch(cli: &Cli) -> Result<u8> {
    let daemon_places = || match daemon::load_config(cli.config.as_deref()) {
        Ok(config) => Ok(cli.places(config)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(daemon::EXIT_CONFIG)
        }
    };
    match &cli.command {
        Command::Transcribe(args) => transcribe(cli, args).map(|ok| u8::from(!ok)),
        Command::Models(cmd) => models(cli, cmd).map(|()| 0),
        Command::Run => match daemon_places() {
            Ok(places) => daemon::run(places),
            Err(code) => Ok(code),
        },
        Command::Login => match daemon_places() {
            Ok(places) => daemon::login(&places),
            Err(code) => Ok(code),
        },
        Command::Config(ConfigCommand::Check) => match daemon_places() {
            Ok(places) => {
                let shown = cli.config.clone().unwrap_or_else(|| {
                    PathBuf::from(voice_transcriber::daemon::config::DEFAULT_PATH)
                });
                Ok(daemon::check(&places, &shown))
            }
            Err(code) => Ok(code),
        },
    }
}

fn models(cli: &Cli, cmd: &ModelsCommand) -> Result<()> {
    let catalog = cli.catalog();
    match cmd {
        ModelsCommand::List => {
            println!("models directory: {}", catalog.dir.display());
            let installed = catalog.installed();
            for k in catalog::KNOWN {
                let mark = if installed.iter().any(|n| n == k.name) {
                    "installed"
                } else {
                    ""
                };
                println!(
                    "{:<16} {:>6} MB  {:<46} {mark}",
                    k.name, k.size_mb, k.ct2_repo
                );
            }
            for n in installed.iter().filter(|n| catalog::lookup(n).is_err()) {
                println!("{n:<16} {:>6}     {:<46} installed", "", "(local)");
            }
        }
        ModelsCommand::Fetch { name } => {
            let p = catalog.fetch(name)?;
            println!("{}", p.display());
        }
        ModelsCommand::Import { dir, name } => {
            let name = match name {
                Some(n) => n.clone(),
                None => dir
                    .canonicalize()
                    .with_context(|| format!("{}", dir.display()))?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("cannot name the model; pass --name")?,
            };
            if name.contains('/') || name.starts_with('.') || name.is_empty() {
                bail!("bad model name {name:?}");
            }
            let p = catalog.import(dir, &name)?;
            println!("{}", p.display());
        }
        ModelsCommand::Quantize { name, to } => {
            let (p, fallbacks) = catalog.quantize(name, to.dtype(), to.label())?;
            if !fallbacks.is_empty() {
                eprintln!(
                    "note: {} matrices are not a multiple of {} wide and were stored as q8_0: {}",
                    fallbacks.len(),
                    to.dtype().block_size(),
                    fallbacks.join(", ")
                );
            }
            println!("{}", p.display());
        }
        ModelsCommand::Path { name } => {
            let (p, _) = catalog.resolve(name)?;
            println!("{}", p.display());
        }
    }
    Ok(())
}

fn transcribe(cli: &Cli, args: &TranscribeArgs) -> Result<bool> {
    let mut threads = ThreadConfig::all_cores();
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        threads.threads = n;
    }
    if let Some(cores) = &args.pin_cores {
        threads.cores = cores.clone();
    }
    limit_process_threads(threads.threads);
    let (dir, name) = cli.catalog().resolve(&args.model)?;
    let mut engine =
        Engine::load(&dir, &name, threads).with_context(|| format!("cannot load model {name}"))?;
    let opts = Options {
        language: match args.language.as_str() {
            "auto" | "" => None,
            code => Some(code.to_string()),
        },
        condition_on_previous_text: !args.no_condition,
        encoder_window: match args.encoder_margin {
            Some(margin_s) => EncoderWindow::Trimmed { margin_s },
            None => EncoderWindow::Full,
        },
        ..Options::default()
    };
    let many = args.files.len() > 1;
    let mut all_ok = true;
    let stdout = std::io::stdout();
    for file in &args.files {
        match transcribe_one(&mut engine, file, &opts, args.format, many) {
            Ok(out) => {
                let mut lock = stdout.lock();
                lock.write_all(out.as_bytes())?;
                lock.flush()?;
            }
            Err(e) => {
                eprintln!("error: {}: {e:#}", file.display());
                all_ok = false;
            }
        }
    }
    Ok(all_ok)
}

fn transcribe_one(
    engine: &mut Engine,
    file: &Path,
    opts: &Options,
    format: OutputFormat,
    many: bool,
) -> Result<String> {
    let start = std::time::Instant::now();
    let samples = audio::decode_file(file)?;
    let duration_s = samples.len() as f64 / mel::SAMPLE_RATE as f64;
    let timed = engine.transcribe(&samples, opts, |s| {
        log::debug!("[{:.2} → {:.2}] {}", s.start, s.end, s.text.trim())
    })?;
    let elapsed_s = start.elapsed().as_secs_f64();
    let t = &timed.transcript;
    log::info!(
        "{}: {duration_s:.1} s of audio in {elapsed_s:.2} s (language {})",
        file.display(),
        t.language
    );
    let shown = file.display().to_string();
    Ok(match format {
        OutputFormat::Txt if many => format!("{shown}: {}\n", t.text()),
        OutputFormat::Txt => format!("{}\n", t.text()),
        OutputFormat::Srt => output::srt(&t.segments),
        OutputFormat::Vtt => output::vtt(&t.segments),
        OutputFormat::Json => {
            let rec = JsonRecord::new(&shown, engine.name(), t, duration_s, elapsed_s);
            format!("{}\n", serde_json::to_string(&rec)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists_parse_ranges_and_reject_garbage() {
        assert_eq!(parse_cores("2,3").unwrap(), vec![2, 3]);
        assert_eq!(parse_cores("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("x").is_err());
        assert!(parse_cores("").is_err());
    }
}
