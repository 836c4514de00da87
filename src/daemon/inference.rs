//! The inference thread: audio decoding and Whisper, away from the networking runtime.
//!
//! The daemon's tokio runtime has one thread, and it must keep answering Telegram's pings
//! while an hour of audio is transcribed. So one plain OS thread owns the [`Engine`] (which
//! fans work out to its own pool of pinned, lower-priority threads) and takes requests from a
//! channel; answers and progress go back through tokio channels the runtime can await without
//! blocking. Switching models happens here too: the new model loads while the old one is
//! still in place, and replaces it only if loading worked.

use super::download::Audio;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::whisper::catalog::{Catalog, CatalogError};
use crate::whisper::decode::Options;
use crate::whisper::engine::{Engine, EngineError, ThreadConfig};

/// A finished transcription.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The whole text.
    pub text: String,
    /// Language used.
    pub language: String,
    /// Length of the audio, seconds.
    pub audio_s: f64,
    /// Time spent decoding and transcribing, seconds.
    pub elapsed_s: f64,
}

/// What the loaded model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Name as installed.
    pub name: String,
    /// False for English-only models.
    pub multilingual: bool,
}

/// Why a model could not be started.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

enum Request {
    Transcribe {
        audio: Audio,
        opts: Options,
        progress: mpsc::UnboundedSender<(f64, String)>,
        done: oneshot::Sender<Result<Outcome, String>>,
    },
    Load {
        name: String,
        done: oneshot::Sender<Result<ModelInfo, String>>,
    },
}

/// Handle on the inference thread. Dropping it ends the thread after the request in hand.
pub struct Inference {
    tx: std_mpsc::Sender<Request>,
    /// Threads and cores in use.
    pub threads: ThreadConfig,
}

impl Inference {
    /// Loads `model` from `catalog` (blocking) and starts the thread that owns it.
    pub fn start(
        catalog: Catalog,
        model: &str,
        threads: ThreadConfig,
    ) -> Result<(Self, ModelInfo), InferenceError> {
        let engine = load(&catalog, model, &threads)?;
        release_free_memory();
        let info = info(&engine);
        let (tx, rx) = std_mpsc::channel();
        let config = threads.clone();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || serve(engine, catalog, config, rx))
            .map_err(|e| EngineError::Threads {
                threads: threads.threads,
                reason: e.to_string(),
            })?;
        Ok((Self { tx, threads }, info))
    }

    /// Decodes and transcribes `audio` (bytes in memory or a file); each finished segment's
    /// end time and text are sent to `progress` as they come.
    pub async fn transcribe(
        &self,
        audio: Audio,
        opts: Options,
        progress: mpsc::UnboundedSender<(f64, String)>,
    ) -> Result<Outcome, String> {
        self.ask(|done| Request::Transcribe {
            audio,
            opts,
            progress,
            done,
        })
        .await
    }

    /// Loads another model; the current one stays if this fails.
    pub async fn load(&self, name: &str) -> Result<ModelInfo, String> {
        let name = name.to_string();
        self.ask(|done| Request::Load { name, done }).await
    }

    /// Sends one request to the inference thread and waits for its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Request,
    ) -> Result<T, String> {
        let stopped = |_| "the inference thread has stopped".to_string();
        let (done, rx) = oneshot::channel();
        self.tx
            .send(request(done))
            .map_err(|e| stopped(e.to_string()))?;
        rx.await.map_err(|e| stopped(e.to_string()))?
    }
}

fn load(catalog: &Catalog, model: &str, threads: &ThreadConfig) -> Result<Engine, InferenceError> {
    let (dir, name) = match catalog.resolve(model) {
        // A known model that is not here yet is downloaded first (on this thread, never on
        // the networking one).
        Err(CatalogError::NotInstalled { .. })
            if crate::whisper::catalog::lookup(model).is_ok() =>
        {
            log::info!("model {model} is not installed; downloading it");
            catalog.fetch(model)?;
            catalog.resolve(model)?
        }
        other => other?,
    };
    Ok(Engine::load(&dir, &name, threads.clone())?)
}

fn info(engine: &Engine) -> ModelInfo {
    ModelInfo {
        name: engine.name().to_string(),
        multilingual: engine.is_multilingual(),
    }
}

fn serve(
    mut engine: Engine,
    catalog: Catalog,
    threads: ThreadConfig,
    rx: std_mpsc::Receiver<Request>,
) {
    while let Ok(request) = rx.recv() {
        handle(&mut engine, &catalog, &threads, request);
        release_free_memory();
    }
}

/// Hands the heap memory freed by a finished job (decoded audio, activations, a replaced
/// model) back to the system. glibc keeps freed memory in per-thread arenas, so without this
/// an idle daemon would stay as large as its largest job.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn handle(engine: &mut Engine, catalog: &Catalog, threads: &ThreadConfig, request: Request) {
    match request {
        Request::Transcribe {
            audio,
            opts,
            progress,
            done,
        } => {
            let start = Instant::now();
            let decoded = match audio {
                Audio::Bytes(bytes) => crate::whisper::audio::decode_bytes(bytes, None),
                Audio::File(path) => crate::whisper::audio::decode_file(&path),
            };
            let result = decoded.map_err(|e| e.to_string()).and_then(|samples| {
                let audio_s = samples.len() as f64 / crate::whisper::audio::SAMPLE_RATE as f64;
                engine
                    .transcribe(&samples, &opts, |s| {
                        let _ = progress.send((s.end, s.text.trim().to_string()));
                    })
                    .map(|t| Outcome {
                        text: t.transcript.text(),
                        language: t.transcript.language,
                        audio_s,
                        elapsed_s: start.elapsed().as_secs_f64(),
                    })
                    .map_err(|e| e.to_string())
            });
            let _ = done.send(result);
        }
        Request::Load { name, done } => {
            // Two models in memory for a moment is the price of never being without one.
            let result = load(catalog, &name, threads).map(|new| {
                *engine = new;
                info(engine)
            });
            let _ = done.send(result.map_err(|e| e.to_string()));
        }
    }
}
