//! The transcription engine: a loaded model and the threads it is allowed to use.
//!
//! On a Raspberry Pi the owner decides how many cores Whisper may take, and the caller's
//! networking thread must never be one of them. candle spreads work over two pools: matrix
//! multiplications run on the *current* rayon pool with a parallelism read from
//! `RAYON_NUM_THREADS`, and quantized kernels use candle's own pool sized by
//! `CANDLE_NUM_THREADS`. [`limit_process_threads`] sets both before any pool exists, and every
//! engine call runs inside a rayon pool of exactly `threads` workers of the engine's own
//! (optionally confined to a core list and run at a lower priority), so the caller's thread only
//! waits.
//!
//! The workers live for one call. Each keeps per-thread scratch for as long as it runs — the
//! `gemm` crate's packing buffer the size of the core's L2 cache, the attention kernel's score
//! block — so a pool kept between voice messages would hold megabytes of an idle daemon's
//! memory for nothing; starting two threads costs well under a millisecond against seconds of
//! inference. Each call joins its workers before it returns, so that memory is back with the
//! allocator by then.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::whisper::decode::{DecodeError, Options, Segment, Transcriber, Transcript};
use crate::whisper::model::Whisper;
use crate::whisper::tokenizer::{TokenizerError, WhisperTokenizer};
use crate::whisper::weights::{tokenizer_path, Format, ModelConfig, Weights, WeightsError};

/// Why an engine could not be built or a model not loaded.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: not a usable Whisper model: {source}")]
    Model {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("cannot start {threads} inference threads: {reason}")]
    Threads { threads: usize, reason: String },
    #[error("core {0} does not exist on this machine")]
    BadCore(usize),
}

/// How many threads inference may use, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadConfig {
    /// Compute threads (≥ 1).
    pub threads: usize,
    /// Cores the threads are confined to; empty for no pinning.
    pub cores: Vec<usize>,
    /// Niceness added to inference threads (0–19) so networking stays responsive.
    pub nice: i32,
}

impl ThreadConfig {
    /// All available cores, no pinning, normal priority.
    pub fn all_cores() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cores: Vec::new(),
            nice: 0,
        }
    }
}

/// Tells candle how many threads its kernels may split work into, and the allocator to keep
/// one heap for all threads. Must run before any other thread is started (it writes the
/// process environment) and before the first tensor op.
///
/// glibc gives each thread that allocates while another holds the heap an arena of its own, and
/// what a transcription frees in those arenas mostly stays with the process, `malloc_trim`
/// notwithstanding: measured on the daemon with tiny.en, 29 MB beyond the weights after one
/// voice message against 17.5 MB with a single arena (whose peak is lower too). Inference
/// allocates a few large buffers per operation, so its threads seldom wait for the one heap.
pub fn limit_process_threads(threads: usize) {
    let n = threads.max(1).to_string();
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; no allocation is in flight on another
    // thread, since none has been started yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Confines the calling thread to `cores` and lowers its priority by `nice`.
fn confine_current_thread(cores: &[usize], nice: i32) {
    if !cores.is_empty() {
        let mut set = nix::sched::CpuSet::new();
        for &c in cores {
            if let Err(e) = set.set(c) {
                log::warn!("cannot add core {c} to the affinity set: {e}");
            }
        }
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
            log::warn!("cannot pin inference thread to cores {cores:?}: {e}");
        }
    }
    if nice > 0 {
        // Linux niceness is per thread; `0` names the calling thread.
        // SAFETY: plain syscall wrapper with integer arguments.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if rc != 0 {
            log::warn!(
                "cannot lower inference thread priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A model ready to transcribe, and the threads it may use.
pub struct Engine {
    transcriber: Transcriber,
    /// Directory the model was loaded from.
    pub model_dir: PathBuf,
    /// Weight format of that directory.
    pub format: Format,
    /// Thread settings in force.
    pub threads: ThreadConfig,
}

/// A transcription with its timing.
#[derive(Debug, Clone)]
pub struct Timed {
    /// The transcript.
    pub transcript: Transcript,
    /// Wall-clock seconds spent.
    pub elapsed_s: f64,
}

impl Engine {
    /// Starts the thread pool and loads the model in `dir` on it.
    pub fn load(dir: &Path, name: &str, threads: ThreadConfig) -> Result<Self, EngineError> {
        // SAFETY: sysconf only reads a system constant.
        let n_cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize;
        if let Some(&bad) = threads.cores.iter().find(|&&c| c >= n_cores) {
            return Err(EngineError::BadCore(bad));
        }
        let transcriber = on_workers(&threads, || load_transcriber(dir, name))??;
        Ok(Self {
            format: Format::detect(dir)?,
            transcriber,
            model_dir: dir.to_path_buf(),
            threads,
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.transcriber.name
    }

    /// True when the model can transcribe other languages than English.
    pub fn is_multilingual(&self) -> bool {
        self.transcriber.is_multilingual()
    }

    /// Transcribes 16 kHz mono samples on the engine's threads.
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        opts: &Options,
        on_segment: impl FnMut(&Segment) + Send,
    ) -> Result<Timed, DecodeError> {
        let start = Instant::now();
        let transcriber = &mut self.transcriber;
        let transcript = on_workers(&self.threads, || {
            transcriber.transcribe(samples, opts, on_segment)
        })
        .map_err(|e| DecodeError::Threads(e.to_string()))??;
        Ok(Timed {
            transcript,
            elapsed_s: start.elapsed().as_secs_f64(),
        })
    }

    /// Runs `f` with the transcriber on the engine's threads (benchmarks, tests).
    ///
    /// # Panics
    /// When the threads cannot be started, which [`Engine::load`] already did once.
    pub fn with_transcriber<R: Send>(&mut self, f: impl FnOnce(&mut Transcriber) -> R + Send) -> R {
        let t = &mut self.transcriber;
        on_workers(&self.threads, || f(t)).expect("inference threads")
    }
}

/// Runs `f` inside a rayon pool of `threads` workers started for this call, and joins the
/// workers before returning, so their per-thread memory has been freed.
fn on_workers<R: Send>(
    threads: &ThreadConfig,
    f: impl FnOnce() -> R + Send,
) -> Result<R, EngineError> {
    let cores = threads.cores.clone();
    let nice = threads.nice;
    let handles = std::sync::Mutex::new(Vec::new());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.threads.max(1))
        .thread_name(|i| format!("whisper-{i}"))
        .start_handler(move |_| confine_current_thread(&cores, nice))
        .spawn_handler(|worker| {
            let mut b = std::thread::Builder::new();
            if let Some(name) = worker.name() {
                b = b.name(name.to_owned());
            }
            let handle = b.spawn(|| worker.run())?;
            handles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(handle);
            Ok(())
        })
        .build()
        .map_err(|e| EngineError::Threads {
            threads: threads.threads,
            reason: e.to_string(),
        })?;
    let out = pool.install(f);
    drop(pool);
    for handle in handles.into_inner().unwrap_or_else(|e| e.into_inner()) {
        if handle.join().is_err() {
            log::warn!("an inference thread panicked");
        }
    }
    Ok(out)
}

/// Loads weights, tokenizer and decoding config from a model directory.
pub fn load_transcriber(dir: &Path, name: &str) -> Result<Transcriber, EngineError> {
    let format = Format::detect(dir)?;
    let tokenizer = WhisperTokenizer::load(&tokenizer_path(dir)?)?;
    let config = ModelConfig::load(dir)?;
    let weights = Weights::load(dir, format)?;
    let model = Whisper::new(&weights).map_err(|source| EngineError::Model {
        path: dir.join(format.file_name()),
        source,
    })?;
    drop(weights); // tensors the model re-stored in f16 are freed here
    log::info!(
        "model {name}: {:.1} MB of weights in memory",
        model.bytes() as f64 / 1e6
    );
    if model.dims.n_vocab < tokenizer.specials.timestamp_begin as usize {
        return Err(EngineError::Model {
            path: dir.join(format.file_name()),
            source: candle_core::Error::Msg(format!(
                "vocabulary of {} tokens does not match its tokenizer",
                model.dims.n_vocab
            )),
        });
    }
    Ok(Transcriber::new(model, tokenizer, &config, name))
}
