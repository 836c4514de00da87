//! Criterion benchmarks comparing Whisper model sizes (and their quantized variants).
//!
//! Groups, each with one bench id per model so criterion's report lines them up side by side:
//!
//! - `log_mel_10s/80`: log-mel features of the real 11 s JFK clip (model independent).
//! - `encoder_30s/<model>`: encoder forward pass on one (padded) 30 s window.
//! - `encoder_peak/<model>`: the machine's measured peak for that pass: plain multi-threaded f32
//!   `gemm` calls of exactly the encoder's matrix shapes (convolutions as their im2col
//!   products, projections, per-head attention products, MLP), no other work. Before criterion
//!   measures it, a table of the encoder's stages is printed: each stage's time (median of three
//!   timed passes), its GFLOP/s, and the whole pass's GFLOP/s against this peak.
//! - `decode_short/<model>`: greedy decoding of the JFK window (audio set once, then
//!   `decode_window` at temperature 0, timestamps on, as `transcribe` does it).
//! - `transcribe_10s/<model>`: whole `Engine::transcribe` of the 11 s clip.
//! - `transcribe_60s/<model>`: whole `Engine::transcribe` of a 53 s English clip
//!   (`en_shakespeare_sonnet_1` from `../shared/eval/opus`; skipped when that is missing).
//! - `threads_10s/<n>`: `transcribe_10s` of `tiny.en` at 1, 2 and all threads.
//!
//! Transcriptions use `Options::default()`, i.e. what the CLI does by default: multilingual
//! models detect the language first (one extra encoder pass and one decoder step).
//!
//! Models are read from `models/cache/` (override with `VT_BENCH_MODELS_DIR`): `tiny.en` and
//! `base` from `NO_INSTALL=1 models/fetch-offline.sh`, plus every other installed model, such as
//! the variants made by `voice-transcriber --models-dir models/cache models quantize tiny.en
//! --to q8_0`. `VT_BENCH_MODELS=tiny.en,base` restricts the run to a list. A missing model is
//! skipped with a message, never an error.
//!
//! Every (group, model) pair is timed once before criterion measures it, and that time is
//! printed. Criterion always takes at least 10 samples (12 runs with warm-up and this probe), so
//! a model whose single run exceeds the group's budget is skipped there with a message: 15 s per
//! run, 40 s for `transcribe_60s`, multiplied by `VT_BENCH_BUDGET_SCALE` (default 1; set e.g.
//! 100 to measure everything however long it takes). A model too slow for `encoder_30s` is not
//! tried in `transcribe_10s`/`transcribe_60s` either, since those contain an encoder pass, and
//! one too slow for `transcribe_10s` is not tried on the 60 s clip.
//!
//! Run: `cargo bench --bench whisper` (all), `cargo bench --bench whisper -- encoder_30s`
//! (one group; a plain-text filter also avoids loading and probing models it excludes).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use rand::SeedableRng;
use voice_transcriber::whisper::audio;
use voice_transcriber::whisper::catalog::{Catalog, KNOWN};
use voice_transcriber::whisper::decode::Options;
use voice_transcriber::whisper::engine::{limit_process_threads, Engine, ThreadConfig};
use voice_transcriber::whisper::mel::{LogMel, N_FRAMES};
use voice_transcriber::whisper::model::{Dims, EncoderStage};

/// Models the README table expects; each is reported as skipped when absent.
const EXPECTED_MODELS: &[&str] = &["tiny.en", "tiny.en-q8_0", "base", "base-q8_0"];
/// Models whose thread scaling is measured. Quantized models are left out on purpose: candle
/// sizes the pool of its quantized kernels once per process (`CANDLE_NUM_THREADS` at first
/// use), so their thread count cannot be varied inside one benchmark binary.
const THREAD_MODELS: &[&str] = &["tiny.en"];
/// The ~10 s clip: JFK "ask not" (11.0 s), shipped with the crate.
const CLIP_10S: &str = "tests/data/audio_jfk_ask_not.ogg";
/// The ~60 s clip: the longest English clip of the shared eval set between 50 and 70 s.
const CLIP_60S: &str = "../shared/eval/opus/en_shakespeare_sonnet_1.ogg";
/// Longest single run, seconds, for which a (group, model) pair is measured (see module docs).
const BUDGET_SECS: f64 = 15.0;
/// The same for `transcribe_60s`.
const BUDGET_60S_SECS: f64 = 40.0;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn all_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Orders model names by size (catalog order), the original weights before quantized ones.
fn model_order(name: &str) -> (usize, String, std::cmp::Reverse<String>) {
    let (base, quant) = match name.rsplit_once("-q") {
        Some((b, q)) if KNOWN.iter().any(|k| k.name == b) => (b, format!("q{q}")),
        _ => (name, String::new()),
    };
    let rank = KNOWN
        .iter()
        .position(|k| k.name == base)
        .unwrap_or(KNOWN.len());
    // Same base: unquantized first, then q8_0, q4_k, q4_0 (more bits first).
    let unknown_name = if rank == KNOWN.len() {
        name.to_string()
    } else {
        String::new()
    };
    (
        rank,
        unknown_name,
        std::cmp::Reverse(if quant.is_empty() { "~".into() } else { quant }),
    )
}

/// The criterion FILTER argument when it is plain text (a regex is left to criterion alone).
fn plain_filter() -> Option<String> {
    const WITH_VALUE: &[&str] = &[
        "--color",
        "-c",
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--format",
        "--profile-time",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            let is_regex = a.chars().any(|c| "\\^$.|?*+()[]{}".contains(c));
            return (!is_regex).then_some(a);
        }
    }
    None
}

/// Run-wide settings and the models, loaded on first use.
struct Bench {
    filter: Option<String>,
    list_only: bool,
    /// Multiplies the per-group budgets (`VT_BENCH_BUDGET_SCALE`).
    budget_scale: f64,
    models: Vec<Model>,
    /// Skips and single-run times, repeated at the end of the run.
    notes: Vec<String>,
}

struct Model {
    name: String,
    dir: PathBuf,
    engine: Option<Engine>,
    /// Set when the model cannot be loaded or run; every group skips it.
    failed: Option<String>,
    /// Set when a run that contains an encoder pass was over budget; the larger groups skip it.
    too_slow: bool,
    /// Encoder output for the JFK window, from `encoder_30s`, for `decode_short`.
    jfk_audio: Option<candle_core::Tensor>,
}

impl Bench {
    fn new() -> Self {
        let models_dir = std::env::var_os("VT_BENCH_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("models/cache"));
        let catalog = Catalog::new(&models_dir);
        let mut notes = Vec::new();
        let mut names: Vec<String> = match std::env::var("VT_BENCH_MODELS") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => {
                let mut names: Vec<String> =
                    EXPECTED_MODELS.iter().map(|s| s.to_string()).collect();
                for n in catalog.installed() {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                names
            }
        };
        names.sort_by_key(|n| model_order(n));
        names.dedup();
        let mut models = Vec::new();
        for name in names {
            if catalog.is_installed(&name) {
                models.push(Model {
                    dir: catalog.path(&name),
                    name,
                    engine: None,
                    failed: None,
                    too_slow: false,
                    jfk_audio: None,
                });
            } else {
                let hint = if name.contains("-q") {
                    let (base, q) = name.rsplit_once("-q").unwrap_or((&name, ""));
                    format!(
                        "target/release/voice-transcriber --models-dir {} models quantize {base} --to q{q}",
                        models_dir.display()
                    )
                } else {
                    "NO_INSTALL=1 models/fetch-offline.sh (or voice-transcriber models fetch)"
                        .to_string()
                };
                let msg = format!(
                    "skipping model {name}: not installed in {}; create it with: {hint}",
                    models_dir.display()
                );
                eprintln!("{msg}");
                notes.push(msg);
            }
        }
        let budget_scale = std::env::var("VT_BENCH_BUDGET_SCALE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(1.0);
        Self {
            filter: plain_filter(),
            list_only: std::env::args().any(|a| a == "--list"),
            budget_scale,
            models,
            notes,
        }
    }

    fn wanted(&self, id: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| id.contains(f.as_str()))
    }

    fn note(&mut self, msg: String) {
        eprintln!("{msg}");
        self.notes.push(msg);
    }

    /// Loads model `i` with all cores (once), unless it is to be skipped.
    fn engine(&mut self, i: usize) -> Option<&mut Engine> {
        if self.models[i].failed.is_some() {
            return None;
        }
        if self.models[i].engine.is_none() {
            limit_process_threads(all_threads());
            let m = &self.models[i];
            let start = Instant::now();
            match Engine::load(&m.dir, &m.name, ThreadConfig::all_cores()) {
                Ok(e) => {
                    eprintln!(
                        "loaded {} ({:?}) in {:.1} s",
                        m.name,
                        e.format,
                        start.elapsed().as_secs_f64()
                    );
                    self.models[i].engine = Some(e);
                }
                Err(e) => {
                    let msg = format!("skipping model {}: cannot load it: {e}", m.name);
                    self.models[i].failed = Some(msg.clone());
                    self.note(msg);
                    return None;
                }
            }
        }
        // Other groups may have changed the thread limit; candle reads it at each matmul.
        limit_process_threads(all_threads());
        self.models[i].engine.as_mut()
    }

    /// Times one run of `f` and says whether criterion should measure it: not when the run
    /// failed or took longer than `budget_secs` (scaled). `chained` groups contain an encoder
    /// pass: they skip a model that was over budget in an earlier chained group, and mark it so.
    fn probe<R>(
        &mut self,
        group: &str,
        i: usize,
        budget_secs: f64,
        chained: bool,
        f: impl FnOnce(&mut Engine) -> Result<R, String>,
    ) -> bool {
        let name = self.models[i].name.clone();
        if chained && self.models[i].too_slow {
            self.note(format!(
                "skipping {group}/{name}: it was already over budget in a smaller group"
            ));
            return false;
        }
        let Some(engine) = self.engine(i) else {
            return false;
        };
        let start = Instant::now();
        let result = f(engine);
        let took = start.elapsed().as_secs_f64();
        eprintln!("{group}/{name}: single run {took:.3} s");
        let budget = budget_secs * self.budget_scale;
        match result {
            Err(e) => {
                let msg = format!("skipping model {name}: {group} failed: {e}");
                self.models[i].failed = Some(msg.clone());
                self.note(msg);
                false
            }
            Ok(_) if took > budget => {
                self.models[i].too_slow |= chained;
                self.note(format!(
                    "skipping {group}/{name}: one run took {took:.1} s, over this group's budget \
                     of {budget:.0} s (criterion needs >= 12 runs; raise VT_BENCH_BUDGET_SCALE \
                     to measure it anyway)"
                ));
                false
            }
            Ok(_) => true,
        }
    }
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, secs: u64) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(secs))
        .sampling_mode(SamplingMode::Flat);
}

fn decode(path: &Path) -> Option<Vec<f32>> {
    match audio::decode_file(path) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("cannot decode {}: {e}", path.display());
            None
        }
    }
}

fn bench_mel(c: &mut Criterion, b: &Bench, clip: &[f32]) {
    if !b.wanted("log_mel_10s/80") {
        return;
    }
    let mut group = c.benchmark_group("log_mel_10s");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("80", |bch| {
        bch.iter(|| {
            let mel = LogMel::new(black_box(clip), 80);
            black_box(mel.window(0, N_FRAMES))
        })
    });
    group.finish();
}

fn bench_encoder(c: &mut Criterion, b: &mut Bench, clip: &[f32]) {
    let mut group = c.benchmark_group("encoder_30s");
    configure(&mut group, 5);
    for i in 0..b.models.len() {
        let name = b.models[i].name.clone();
        if !b.wanted(&format!("encoder_30s/{name}")) || b.list_only {
            if b.list_only {
                group.bench_function(&name, |bch| bch.iter(|| ()));
            }
            continue;
        }
        let Some(engine) = b.engine(i) else { continue };
        let n_mels = engine.with_transcriber(|t| t.model.dims.n_mels);
        let window = LogMel::new(clip, n_mels).window(0, N_FRAMES);
        let mut encoded = None;
        let ok = b.probe("encoder_30s", i, BUDGET_SECS, true, |e| {
            let audio =
                e.with_transcriber(|t| t.encode(window.clone()).map_err(|e| e.to_string()))?;
            encoded = Some(audio);
            Ok(())
        });
        // decode_short decodes this same window: keep it, a slow encoder is not run twice.
        b.models[i].jfk_audio = encoded;
        if !ok {
            continue;
        }
        let engine = b.models[i].engine.as_mut().expect("loaded");
        group.bench_function(&name, |bch| {
            bch.iter(|| {
                engine.with_transcriber(|t| black_box(t.encode(window.clone()).expect("encode")))
            })
        });
    }
    group.finish();
}

/// The encoder's matrix products over one 30 s window as `(m, n, k, times)`: `m × k` by `k × n`.
fn encoder_products(d: &Dims) -> Vec<(usize, usize, usize, usize)> {
    let (n, w, mels, layers) = (N_FRAMES / 2, d.n_audio_state, d.n_mels, d.n_audio_layer);
    let (heads, head) = (w / 64, 64);
    vec![
        (N_FRAMES, w, 3 * mels, 1),   // conv1, kernel 3, as im2col
        (n, w, 3 * w, 1),             // conv2, kernel 3, stride 2
        (n, w, w, 4 * layers),        // query, key, value, out
        (n, n, head, heads * layers), // q·kᵀ, per head
        (n, head, n, heads * layers), // scores·v, per head
        (n, 4 * w, w, layers),        // fc1
        (n, w, 4 * w, layers),        // fc2
    ]
}

/// Runs every product of [`encoder_products`] once as a plain f32 gemm on all threads.
struct PeakGemm {
    products: Vec<(usize, usize, usize, usize)>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl PeakGemm {
    fn new(d: &Dims) -> Self {
        let products = encoder_products(d);
        let size = |f: fn(&(usize, usize, usize, usize)) -> usize| {
            products.iter().map(f).max().unwrap_or(0)
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut fill = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| rand::Rng::random_range(&mut rng, -1.0..1.0))
                .collect()
        };
        Self {
            a: fill(size(|&(m, _, k, _)| m * k)),
            b: fill(size(|&(_, n, k, _)| k * n)),
            c: vec![0.0; size(|&(m, n, _, _)| m * n)],
            products,
        }
    }

    fn flops(&self) -> f64 {
        self.products
            .iter()
            .map(|&(m, n, k, times)| 2.0 * (m * n * k * times) as f64)
            .sum()
    }

    fn run(&mut self, threads: usize) {
        for &(m, n, k, times) in &self.products {
            for _ in 0..times {
                // SAFETY: a is m × k, b is k × n, c is m × n, all row-major and large enough.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        self.c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        self.a.as_ptr(),
                        1,
                        k as isize,
                        self.b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(threads),
                    );
                }
            }
        }
        black_box(&self.c);
    }
}

fn bench_encoder_peak(c: &mut Criterion, b: &mut Bench, clip: &[f32]) {
    let mut group = c.benchmark_group("encoder_peak");
    configure(&mut group, 5);
    let threads = all_threads();
    for i in 0..b.models.len() {
        let name = b.models[i].name.clone();
        if !b.wanted(&format!("encoder_peak/{name}")) || b.list_only {
            if b.list_only {
                group.bench_function(&name, |bch| bch.iter(|| ()));
            }
            continue;
        }
        if b.models[i].too_slow {
            continue;
        }
        let Some(engine) = b.engine(i) else { continue };
        let dims = engine.with_transcriber(|t| t.model.dims);
        let window = LogMel::new(clip, dims.n_mels).window(0, N_FRAMES);
        // Three timed passes after one untimed; each stage's median.
        let mut laps: Vec<std::collections::HashMap<EncoderStage, f64>> = Vec::new();
        for pass in 0..4 {
            let mut lap = std::collections::HashMap::new();
            let w = window.clone();
            engine.with_transcriber(|t| {
                let mel = candle_core::Tensor::from_vec(
                    w,
                    (1, dims.n_mels, N_FRAMES),
                    &candle_core::Device::Cpu,
                )
                .expect("mel");
                t.model
                    .encoder
                    .forward_timed(&mel, &mut |s, d| {
                        *lap.entry(s).or_insert(0.0) += d.as_secs_f64()
                    })
                    .expect("encode");
            });
            if pass > 0 {
                laps.push(lap);
            }
        }
        let median = |s: EncoderStage| {
            let mut v: Vec<f64> = laps.iter().map(|l| l[&s]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut peak = PeakGemm::new(&dims);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let mut runs: Vec<f64> = (0..4)
            .map(|_| {
                let start = Instant::now();
                pool.install(|| peak.run(threads));
                start.elapsed().as_secs_f64()
            })
            .skip(1)
            .collect();
        runs.sort_by(f64::total_cmp);
        let peak_gflops = peak.flops() / runs[1] / 1e9;
        eprintln!("encoder_peak/{name}: one 30 s window, {threads} threads");
        eprintln!(
            "  {:<13} {:>9} {:>8} {:>9}",
            "stage", "ms", "GFLOP", "GFLOP/s"
        );
        let (mut total_s, mut total_flops) = (0.0, 0.0);
        for s in EncoderStage::ALL {
            let (secs, flops) = (median(s), s.flops(&dims, N_FRAMES));
            total_s += secs;
            total_flops += flops;
            let rate = if flops > 0.0 {
                format!("{:.1}", flops / secs / 1e9)
            } else {
                "-".into()
            };
            eprintln!(
                "  {:<13} {:>9.1} {:>8.2} {:>9}",
                format!("{s:?}"),
                secs * 1e3,
                flops / 1e9,
                rate
            );
        }
        let rate = total_flops / total_s / 1e9;
        let msg = format!(
            "encoder_peak/{name}: encoder {:.1} ms, {rate:.1} GFLOP/s; the same products as plain \
             gemm {:.1} ms, {peak_gflops:.1} GFLOP/s; encoder at {:.0} % of that peak",
            total_s * 1e3,
            runs[1] * 1e3,
            100.0 * rate / peak_gflops
        );
        b.note(msg);
        group.bench_function(&name, |bch| bch.iter(|| pool.install(|| peak.run(threads))));
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion, b: &mut Bench, clip: &[f32]) {
    let mut group = c.benchmark_group("decode_short");
    configure(&mut group, 5);
    for i in 0..b.models.len() {
        let name = b.models[i].name.clone();
        if !b.wanted(&format!("decode_short/{name}")) || b.list_only {
            if b.list_only {
                group.bench_function(&name, |bch| bch.iter(|| ()));
            }
            continue;
        }
        let cached = b.models[i].jfk_audio.take();
        let Some(engine) = b.engine(i) else { continue };
        // Encode the window once (or reuse encoder_30s's output) and give it to the decoder;
        // only decoding is timed.
        let prompt = engine.with_transcriber(|t| -> Result<Vec<u32>, String> {
            let audio = match cached {
                Some(a) => a,
                None => {
                    let window = LogMel::new(clip, t.model.dims.n_mels).window(0, N_FRAMES);
                    t.encode(window).map_err(|e| e.to_string())?
                }
            };
            t.model
                .decoder
                .set_audio(&audio)
                .map_err(|e| e.to_string())?;
            let s = &t.tokenizer.specials;
            Ok(if t.is_multilingual() {
                let en = t.tokenizer.language_token("en").ok_or("no <|en|> token")?;
                vec![s.sot, en, s.transcribe]
            } else {
                vec![s.sot]
            })
        });
        let prompt = match prompt {
            Ok(p) => p,
            Err(e) => {
                b.note(format!("skipping decode_short/{name}: {e}"));
                continue;
            }
        };
        let mut text = String::new();
        let ok = b.probe("decode_short", i, BUDGET_SECS, false, |e| {
            e.with_transcriber(|t| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0);
                let r = t
                    .decode_window(&prompt, 0.0, &mut rng)
                    .map_err(|e| e.to_string())?;
                let words = t.tokenizer.decode(&r.tokens);
                text = format!("{} tokens: {}", r.tokens.len(), words.trim());
                Ok(())
            })
        });
        if !ok {
            continue;
        }
        eprintln!("decode_short/{name}: {text}");
        let engine = b.models[i].engine.as_mut().expect("loaded");
        group.bench_function(&name, |bch| {
            bch.iter(|| {
                engine.with_transcriber(|t| {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
                    black_box(t.decode_window(&prompt, 0.0, &mut rng).expect("decode"))
                })
            })
        });
    }
    group.finish();
}

fn bench_transcribe(
    c: &mut Criterion,
    b: &mut Bench,
    group_name: &str,
    clip: &[f32],
    measure_secs: u64,
    budget_secs: f64,
) {
    let mut group = c.benchmark_group(group_name);
    configure(&mut group, measure_secs);
    let opts = Options::default();
    for i in 0..b.models.len() {
        let name = b.models[i].name.clone();
        if !b.wanted(&format!("{group_name}/{name}")) || b.list_only {
            if b.list_only {
                group.bench_function(&name, |bch| bch.iter(|| ()));
            }
            continue;
        }
        let mut text = String::new();
        let ok = b.probe(group_name, i, budget_secs, true, |e| {
            let t = e
                .transcribe(clip, &opts, |_| {})
                .map_err(|e| e.to_string())?;
            text = format!(
                "{:.2} s, language {}: {}",
                t.elapsed_s,
                t.transcript.language,
                t.transcript.text()
            );
            Ok(())
        });
        if !ok {
            continue;
        }
        let short: String = text.chars().take(140).collect();
        eprintln!("{group_name}/{name}: {short}");
        let engine = b.models[i].engine.as_mut().expect("loaded");
        group.bench_function(&name, |bch| {
            bch.iter(|| black_box(engine.transcribe(clip, &opts, |_| {}).expect("transcribe")))
        });
    }
    group.finish();
}

fn bench_threads(c: &mut Criterion, b: &mut Bench, clip: &[f32]) {
    let all = all_threads();
    let mut counts: Vec<(usize, String)> = vec![(1, "1".into())];
    if all > 2 {
        counts.push((2, "2".into()));
    } else if all == 2 {
        eprintln!("threads_10s: this machine has 2 cores, so `2` is the same run as `all`");
    }
    if all > 1 {
        counts.push((all, "all".into()));
    }
    let opts = Options::default();
    for &model in THREAD_MODELS {
        let Some(m) = b.models.iter().find(|m| m.name == model) else {
            eprintln!("skipping threads_10s for {model}: model not installed");
            continue;
        };
        let dir = m.dir.clone();
        let group_name = if THREAD_MODELS.len() == 1 {
            "threads_10s".to_string()
        } else {
            format!("threads_10s_{model}")
        };
        let mut group = c.benchmark_group(&group_name);
        configure(&mut group, 10);
        for (n, id) in &counts {
            if !b.wanted(&format!("{group_name}/{id}")) || b.list_only {
                if b.list_only {
                    group.bench_function(id, |bch| bch.iter(|| ()));
                }
                continue;
            }
            limit_process_threads(*n);
            let threads = ThreadConfig {
                threads: *n,
                cores: Vec::new(),
                nice: 0,
            };
            let mut engine = match Engine::load(&dir, model, threads) {
                Ok(e) => e,
                Err(e) => {
                    b.note(format!(
                        "skipping {group_name}/{id}: cannot load {model}: {e}"
                    ));
                    continue;
                }
            };
            let start = Instant::now();
            if let Err(e) = engine.transcribe(clip, &opts, |_| {}) {
                b.note(format!("skipping {group_name}/{id}: {e}"));
                continue;
            }
            let took = start.elapsed().as_secs_f64();
            eprintln!("{group_name}/{id}: single run {took:.3} s");
            let budget = BUDGET_SECS * b.budget_scale;
            if took > budget {
                b.note(format!(
                    "skipping {group_name}/{id}: one run took {took:.1} s, over the budget of \
                     {budget:.0} s (raise VT_BENCH_BUDGET_SCALE to measure it anyway)"
                ));
                continue;
            }
            group.bench_function(id, |bch| {
                bch.iter(|| black_box(engine.transcribe(clip, &opts, |_| {}).expect("transcribe")))
            });
        }
        group.finish();
    }
    limit_process_threads(all);
}

fn main() {
    // Before any candle or rayon work: the global pool (used by the log-mel code) and candle's
    // quantized-kernel pool are sized from these on first use.
    limit_process_threads(all_threads());
    let mut c = Criterion::default().configure_from_args();
    let mut b = Bench::new();

    let Some(clip_10s) = decode(&root().join(CLIP_10S)) else {
        eprintln!("skipping all benchmarks: {CLIP_10S} is missing or unreadable");
        return;
    };
    let path_60s = root().join(CLIP_60S);
    let clip_60s = if path_60s.exists() {
        decode(&path_60s)
    } else {
        eprintln!(
            "skipping transcribe_60s: {} not found (the shared eval set is not checked out)",
            path_60s.display()
        );
        None
    };
    eprintln!(
        "clips: 10s = {CLIP_10S} ({:.1} s), 60s = {} ({}); threads: {}; budget scale {}",
        clip_10s.len() as f64 / 16_000.0,
        CLIP_60S,
        clip_60s.as_ref().map_or("missing".into(), |c| format!(
            "{:.1} s",
            c.len() as f64 / 16_000.0
        )),
        all_threads(),
        b.budget_scale
    );

    bench_mel(&mut c, &b, &clip_10s);
    // Cheapest first: a model too slow for one group is not tried in the larger ones.
    bench_encoder(&mut c, &mut b, &clip_10s);
    bench_encoder_peak(&mut c, &mut b, &clip_10s);
    bench_decode(&mut c, &mut b, &clip_10s);
    bench_transcribe(&mut c, &mut b, "transcribe_10s", &clip_10s, 10, BUDGET_SECS);
    if let Some(clip) = &clip_60s {
        bench_transcribe(&mut c, &mut b, "transcribe_60s", clip, 20, BUDGET_60S_SECS);
    }
    // Free the all-cores engines before the per-thread-count ones are built.
    for m in &mut b.models {
        m.engine = None;
    }
    bench_threads(&mut c, &mut b, &clip_10s);

    if !b.notes.is_empty() {
        eprintln!("\nmeasured, skipped or cut short:");
        for n in &b.notes {
            eprintln!("  {n}");
        }
    }
    c.final_summary();
}
