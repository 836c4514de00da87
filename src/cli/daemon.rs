//! The `run`, `login` and `config check` commands: the daemon's edge.
//!
//! Here the configuration is read, the Telegram link opened, the
//! current-thread runtime built and the signals wired to the shutdown trigger. The exit status
//! tells systemd what happened: 0 after a clean stop, [`EXIT_UNAUTHORIZED`] when the login is
//! gone (the unit does not restart on it), [`EXIT_CONFIG`] for a configuration that cannot work.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result};

use voice_transcriber::daemon::config::{self, Config};
use voice_transcriber::daemon::inference::InferenceError;
use voice_transcriber::daemon::notify::Notifier;
use voice_transcriber::daemon::shutdown;
use voice_transcriber::daemon::{Daemon, Exit};
use voice_transcriber::telegram::{self, TelegramError};
use voice_transcriber::whisper::catalog::{Catalog, CatalogError};
use voice_transcriber::whisper::engine::limit_process_threads;

/// Exit status when the Telegram login is missing or was revoked (sysexits' EX_NOPERM).
pub const EXIT_UNAUTHORIZED: u8 = 77;
/// Exit status for an unusable configuration (sysexits' EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// Where things live, after flags, config and defaults.
pub struct Places {
    /// The configuration.
    pub config: Config,
    /// State directory.
    pub state_dir: PathBuf,
    /// Model catalog.
    pub catalog: Catalog,
}

impl Places {
    /// Flags win over the config file, which wins over the built-in defaults.
    pub fn resolve(
        config: Config,
        state_flag: Option<&Path>,
        models_flag: Option<&Path>,
        default_state: impl FnOnce() -> PathBuf,
    ) -> Self {
        let state_dir = state_flag
            .map(Path::to_path_buf)
            .or_else(|| config.state_dir.clone())
            .unwrap_or_else(default_state);
        let models = models_flag
            .map(Path::to_path_buf)
            .or_else(|| config.models_dir.clone())
            .unwrap_or_else(|| state_dir.join("models"));
        Self {
            config,
            state_dir,
            catalog: Catalog::new(models),
        }
    }
}

/// Reads the config: the named file must exist, the default one may be absent.
pub fn load_config(path: Option<&Path>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => Config::load(p, true),
        None => Config::load(Path::new(config::DEFAULT_PATH), false),
    }
}

/// `config check`: prints the effective configuration (secrets masked) and what it implies.
pub fn check(places: &Places, config_path: &Path) -> u8 {
    let c = &places.config;
    println!("# configuration read from {}", config_path.display());
    print!("{}", c.to_masked_toml());
    println!();
    println!("# state directory: {}", places.state_dir.display());
    println!("# models directory: {}", places.catalog.dir.display());
    let mut ok = true;
    match places.catalog.resolve(&c.model) {
        Ok((dir, _)) => println!("# model {}: installed at {}", c.model, dir.display()),
        Err(e) => {
            println!("# model {}: {e}", c.model);
            ok = false;
        }
    }
    match c.credentials() {
        Ok(_) => println!("# telegram credentials: set"),
        Err(e) => {
            println!("# {e}");
            ok = false;
        }
    }
    let session = telegram::session_path(&places.state_dir);
    if session.exists() {
        println!("# telegram session: {}", session.display());
    } else {
        println!(
            "# telegram session: none at {} (run `voice-transcriber login`)",
            session.display()
        );
    }
    if ok {
        0
    } else {
        eprintln!("error: the configuration is incomplete (see the lines above)");
        EXIT_CONFIG
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `login`: interactive, on a terminal.
pub fn login(places: &Places) -> Result<u8> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        eprintln!("error: login asks for a phone number and a code; run it on a terminal");
        return Ok(2);
    }
    let mut config = places.config.clone();
    let asked = config.telegram.api_id.is_none() || config.telegram.api_hash.is_none();
    if asked {
        eprintln!("API credentials of your Telegram application (https://my.telegram.org):");
        if config.telegram.api_id.is_none() {
            let id = ask("api_id: ")?;
            config.telegram.api_id = Some(id.trim().parse().context("api_id must be a number")?);
        }
        if config.telegram.api_hash.is_none() {
            config.telegram.api_hash = Some(ask("api_hash: ")?.trim().to_string());
        }
        if let Err(e) = config.validate() {
            eprintln!("error: {e}");
            return Ok(EXIT_CONFIG);
        }
    }
    let (api_id, api_hash) = config.credentials()?;
    let session = telegram::session_path(&places.state_dir);
    let summary = runtime()?.block_on(telegram::login(api_id, &api_hash, &session))?;
    println!("{summary}");
    println!("session saved to {}", session.display());
    if asked {
        println!(
            "`run` needs the api_id too: put `api_id = {api_id}` under [telegram] in the config file (or set TG_API_ID)"
        );
    }
    Ok(0)
}

/// Prints `prompt` and reads one line from the terminal.
fn ask(prompt: &str) -> Result<String> {
    use std::io::{BufRead, Write};
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        anyhow::bail!("no answer (end of input)");
    }
    Ok(line)
}

/// `run`: the daemon, until a signal or a lost login.
pub fn run(places: Places) -> Result<u8> {
    let Places {
        config,
        state_dir,
        catalog,
    } = places;
    limit_process_threads(config.effective_threads());
    let notifier = Notifier::from_env();
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let (trigger, stop) = shutdown::channel();
        let trigger = Rc::new(trigger);
        watch_signals(Rc::clone(&trigger))?;
        let (api_id, _) = match config.credentials() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(EXIT_CONFIG);
            }
        };
        let session = telegram::session_path(&state_dir);
        let (tg, mut updates) = match telegram::open(api_id, &session).await {
            Ok(link) => link,
            Err(e @ TelegramError::NotLoggedIn(_)) => {
                eprintln!("error: {e}");
                return Ok(EXIT_UNAUTHORIZED);
            }
            Err(e) => return Err(e.into()),
        };
        let daemon = match start(config, state_dir, catalog) {
            Ok(d) => d,
            Err(code) => return Ok(code),
        };
        let exit = daemon.run(&mut updates, tg, &notifier, &trigger, stop).await;
        if let Err(e) = updates.close().await {
            log::warn!("closing the Telegram connection: {e}");
        }
        Ok(match exit {
            Exit::Stopped => {
                log::info!("stopped");
                0
            }
            Exit::Unauthorized(why) => {
                eprintln!(
                    "error: the Telegram login is no longer valid ({why}); run `voice-transcriber login` again"
                );
                EXIT_UNAUTHORIZED
            }
        })
    })
}

/// Loads state, spool and model. On failure, says why and gives the exit status: a model
/// download that failed (the network may not be up yet after a boot) is worth a restart;
/// anything else (missing model, unreadable state directory) needs the owner.
fn start(config: Config, state_dir: PathBuf, catalog: Catalog) -> Result<Rc<Daemon>, u8> {
    Daemon::open(config, state_dir, catalog)
        .map(Rc::new)
        .map_err(|e| {
            eprintln!("error: {e:#}");
            let download = matches!(
                e.downcast_ref::<InferenceError>(),
                Some(InferenceError::Catalog(CatalogError::Download { .. }))
            );
            if download {
                2
            } else {
                EXIT_CONFIG
            }
        })
}

/// First SIGTERM/SIGINT: stop taking work and shut down cleanly. Second: exit at once (the
/// job in hand stays in the spool).
fn watch_signals(trigger: Rc<shutdown::Trigger>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::task::spawn_local(async move {
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n == 0 {
                log::info!("stop signal received; finishing up (send it again to exit at once)");
                trigger.fire();
            } else {
                log::warn!("second stop signal: exiting now");
                std::process::exit(0);
            }
        }
    });
    Ok(())
}
