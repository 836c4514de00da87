//! The models directory: which Whisper models exist, where they are installed, and getting
//! them there.
//!
//! A model is a directory `<models dir>/<name>/` in one of the formats of [`crate::whisper::weights`].
//! Names map to Hugging Face repositories — faster-whisper's CTranslate2 conversions first
//! (smaller, f16), OpenAI's safetensors second — and are downloaded with `hf-hub`. What arrives
//! is verified twice: each file against the content hash the Hub served it under, and the
//! directory by parsing it as a model before it is moved into place, so a half-downloaded or
//! wrong file never becomes "installed".

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::whisper::weights::{tokenizer_path, Format, WeightsError};

/// Why a model could not be found, fetched or imported.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("unknown model {name:?} (known: {known})")]
    Unknown { name: String, known: String },
    #[error("model {name} is not installed in {dir}; fetch it with: voice-transcriber models fetch {name}")]
    NotInstalled { name: String, dir: PathBuf },
    #[error("model {name} does not exist yet; create it with: voice-transcriber models quantize {base} --to {format}")]
    NotQuantized {
        name: String,
        base: String,
        format: String,
    },
    #[error("download of {repo}/{file} failed: {reason}")]
    Download {
        repo: String,
        file: String,
        reason: String,
    },
    #[error("{path}: content hash {actual} does not match {expected}; the download is corrupt")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] WeightsError),
}

/// One downloadable model.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// Name used on the command line and in the config.
    pub name: &'static str,
    /// faster-whisper (CTranslate2) repository.
    pub ct2_repo: &'static str,
    /// OpenAI safetensors repository (fallback).
    pub hf_repo: &'static str,
    /// Approximate download size, MB (shown by `models list`).
    pub size_mb: u32,
}

/// Every model name we know how to fetch.
pub const KNOWN: &[Known] = &[
    known(
        "tiny",
        "Systran/faster-whisper-tiny",
        "openai/whisper-tiny",
        75,
    ),
    known(
        "tiny.en",
        "Systran/faster-whisper-tiny.en",
        "openai/whisper-tiny.en",
        75,
    ),
    known(
        "base",
        "Systran/faster-whisper-base",
        "openai/whisper-base",
        145,
    ),
    known(
        "base.en",
        "Systran/faster-whisper-base.en",
        "openai/whisper-base.en",
        145,
    ),
    known(
        "small",
        "Systran/faster-whisper-small",
        "openai/whisper-small",
        484,
    ),
    known(
        "small.en",
        "Systran/faster-whisper-small.en",
        "openai/whisper-small.en",
        484,
    ),
    known(
        "medium",
        "Systran/faster-whisper-medium",
        "openai/whisper-medium",
        1530,
    ),
    known(
        "medium.en",
        "Systran/faster-whisper-medium.en",
        "openai/whisper-medium.en",
        1530,
    ),
    known(
        "large-v1",
        "Systran/faster-whisper-large-v1",
        "openai/whisper-large",
        3090,
    ),
    known(
        "large-v2",
        "Systran/faster-whisper-large-v2",
        "openai/whisper-large-v2",
        3090,
    ),
    known(
        "large-v3",
        "Systran/faster-whisper-large-v3",
        "openai/whisper-large-v3",
        3090,
    ),
    known(
        "large-v3-turbo",
        "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
        "openai/whisper-large-v3-turbo",
        1620,
    ),
];

const fn known(name: &'static str, ct2: &'static str, hf: &'static str, mb: u32) -> Known {
    Known {
        name,
        ct2_repo: ct2,
        hf_repo: hf,
        size_mb: mb,
    }
}

/// Files that make up a model directory, by format; the first is the weights.
fn files(format: Format) -> &'static [&'static str] {
    match format {
        Format::Ct2 => &[
            "model.bin",
            "config.json",
            "tokenizer.json",
            "vocabulary.txt",
        ],
        Format::Safetensors => &["model.safetensors", "config.json", "tokenizer.json"],
        Format::Gguf => &["model.gguf", "config.json", "tokenizer.json"],
    }
}

/// Looks a name up in [`KNOWN`].
pub fn lookup(name: &str) -> Result<&'static Known, CatalogError> {
    KNOWN
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| CatalogError::Unknown {
            name: name.to_string(),
            known: KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
        })
}

/// The models directory and the operations on it.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Root holding one sub-directory per installed model.
    pub dir: PathBuf,
}

impl Catalog {
    /// A catalog rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Where model `name` lives (whether or not it is installed).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// True when `name` is installed (its directory holds a model and a tokenizer).
    pub fn is_installed(&self, name: &str) -> bool {
        let p = self.path(name);
        Format::detect(&p).is_ok() && tokenizer_path(&p).is_ok()
    }

    /// Installed model directories, sorted by name (quantized variants included).
    pub fn installed(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && self.is_installed(n))
            .collect();
        names.sort();
        names
    }

    /// Resolves a `--model` argument: an existing model directory path, or an installed name.
    /// Returns the directory and the display name.
    pub fn resolve(&self, model: &str) -> Result<(PathBuf, String), CatalogError> {
        let as_path = Path::new(model);
        if model.contains('/') && as_path.is_dir() {
            let name = as_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| model.to_string());
            return Ok((as_path.to_path_buf(), name));
        }
        if self.is_installed(model) {
            return Ok((self.path(model), model.to_string()));
        }
        // A quantized variant such as `base-q8_0` is produced locally, not fetched.
        if let Some((base, format)) = model.rsplit_once("-q") {
            if lookup(base).is_ok() {
                return Err(CatalogError::NotQuantized {
                    name: model.to_string(),
                    base: base.to_string(),
                    format: format!("q{format}"),
                });
            }
        }
        lookup(model)?;
        Err(CatalogError::NotInstalled {
            name: model.to_string(),
            dir: self.dir.clone(),
        })
    }

    /// Downloads `name` from the Hugging Face Hub into the models directory.
    pub fn fetch(&self, name: &str) -> Result<PathBuf, CatalogError> {
        let k = lookup(name)?;
        let cache = self.dir.join(".hf-cache");
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_cache_dir(cache)
            .with_progress(true)
            .build()
            .map_err(|e| CatalogError::Download {
                repo: k.ct2_repo.into(),
                file: String::new(),
                reason: e.to_string(),
            })?;
        let mut last_err = None;
        for (repo_id, format) in [(k.ct2_repo, Format::Ct2), (k.hf_repo, Format::Safetensors)] {
            match self.fetch_repo(&api, repo_id, format, name) {
                Ok(p) => return Ok(p),
                Err(e) => {
                    log::warn!("{e}");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| CatalogError::Unknown {
            name: name.into(),
            known: String::new(),
        }))
    }

    fn fetch_repo(
        &self,
        api: &hf_hub::api::sync::Api,
        repo_id: &str,
        format: Format,
        name: &str,
    ) -> Result<PathBuf, CatalogError> {
        let repo = api.model(repo_id.to_string());
        let staging = self.dir.join(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&staging);
        create_dir(&staging)?;
        for (i, file) in files(format).iter().enumerate() {
            let got = match repo.get(file) {
                Ok(p) => p,
                // vocabulary.txt is optional: the tokenizer carries the same ids.
                Err(_) if *file == "vocabulary.txt" => continue,
                Err(e) => {
                    return Err(CatalogError::Download {
                        repo: repo_id.into(),
                        file: (*file).into(),
                        reason: e.to_string(),
                    })
                }
            };
            if i == 0 {
                verify_blob(&got)?;
            }
            link_or_copy(&got, &staging.join(file))?;
        }
        self.install(&staging, name)
    }

    /// Checks that `src` holds a loadable model and copies it in as `name`.
    pub fn import(&self, src: &Path, name: &str) -> Result<PathBuf, CatalogError> {
        let format = check_model_dir(src)?;
        let staging = self.dir.join(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&staging);
        create_dir(&staging)?;
        for file in files(format) {
            let from = src.join(file);
            if from.exists() {
                link_or_copy(&from, &staging.join(file))?;
            }
        }
        self.install(&staging, name)
    }

    /// Quantizes installed model `name` to `dtype` and installs it beside the original as
    /// `<name>-<dtype>` (GGUF). Returns the new directory and the matrices that fell back to
    /// q8_0 because their width does not fit `dtype`'s blocks.
    pub fn quantize(
        &self,
        name: &str,
        dtype: candle_core::quantized::GgmlDType,
        label: &str,
    ) -> Result<(PathBuf, Vec<String>), CatalogError> {
        let (src, _) = self.resolve(name)?;
        let format = Format::detect(&src)?;
        let weights = crate::whisper::weights::Weights::load(&src, format)?;
        let (q, fallbacks) = weights.quantize(dtype).map_err(|e| WeightsError::Invalid {
            path: src.clone(),
            reason: e.to_string(),
        })?;
        let new_name = format!("{name}-{label}");
        let staging = self.dir.join(format!(".{new_name}.partial"));
        let _ = std::fs::remove_dir_all(&staging);
        create_dir(&staging)?;
        q.save_gguf(&staging.join("model.gguf"))?;
        for file in ["config.json", "tokenizer.json"] {
            if src.join(file).exists() {
                link_or_copy(&src.join(file), &staging.join(file))?;
            }
        }
        Ok((self.install(&staging, &new_name)?, fallbacks))
    }

    /// Validates a staged directory and renames it into place (replacing an older copy).
    fn install(&self, staging: &Path, name: &str) -> Result<PathBuf, CatalogError> {
        check_model_dir(staging)?;
        let dest = self.path(name);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|source| CatalogError::Io {
                path: dest.clone(),
                source,
            })?;
        }
        std::fs::rename(staging, &dest).map_err(|source| CatalogError::Io {
            path: dest.clone(),
            source,
        })?;
        Ok(dest)
    }
}

/// Verifies that a directory holds a model whose weights header parses and a tokenizer.
pub fn check_model_dir(dir: &Path) -> Result<Format, CatalogError> {
    let format = Format::detect(dir)?;
    tokenizer_path(dir)?;
    if format == Format::Ct2 {
        crate::whisper::ct2::Ct2Model::open(&dir.join("model.bin")).map_err(WeightsError::from)?;
    }
    Ok(format)
}

fn create_dir(p: &Path) -> Result<(), CatalogError> {
    std::fs::create_dir_all(p).map_err(|source| CatalogError::Io {
        path: p.to_path_buf(),
        source,
    })
}

/// Hard-links `from` to `to` (same filesystem, no extra space) or copies it.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), CatalogError> {
    let from = std::fs::canonicalize(from).map_err(|source| CatalogError::Io {
        path: from.to_path_buf(),
        source,
    })?;
    if std::fs::hard_link(&from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(&from, to)
        .map(|_| ())
        .map_err(|source| CatalogError::Io {
            path: to.to_path_buf(),
            source,
        })
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, CatalogError> {
    let mut f = std::fs::File::open(path).map_err(|source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The Hub stores large (LFS) files under their SHA-256, and hf-hub's cache names each blob by
/// that hash; the snapshot entry is a symlink to it. Re-hash the blob and compare.
pub fn verify_blob(snapshot_file: &Path) -> Result<(), CatalogError> {
    let blob = std::fs::canonicalize(snapshot_file).map_err(|source| CatalogError::Io {
        path: snapshot_file.to_path_buf(),
        source,
    })?;
    let expected = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        // Not an LFS blob (small files are named by git object id): nothing to compare.
        return Ok(());
    }
    let actual = sha256_file(&blob)?;
    if actual != expected {
        return Err(CatalogError::Checksum {
            path: blob,
            expected,
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_missing_models_tell_the_user_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::new(dir.path());
        let e = c.resolve("tiny.en").unwrap_err().to_string();
        assert!(e.contains("voice-transcriber models fetch tiny.en"), "{e}");
        let e = c.resolve("huge").unwrap_err().to_string();
        assert!(
            e.contains("unknown model \"huge\"") && e.contains("base.en"),
            "{e}"
        );
    }

    #[test]
    fn blob_named_by_its_hash_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"weights";
        let real = {
            let mut h = Sha256::new();
            h.update(data);
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let blob = dir.path().join(&real);
        std::fs::write(&blob, data).unwrap();
        let link = dir.path().join("model.bin");
        std::os::unix::fs::symlink(&blob, &link).unwrap();
        verify_blob(&link).unwrap();
        // Same name, different bytes: corrupt.
        std::fs::write(&blob, b"weightz").unwrap();
        let e = verify_blob(&link).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn import_refuses_a_directory_without_a_model() {
        let src = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("tokenizer.json"), "{}").unwrap();
        let e = Catalog::new(models.path())
            .import(src.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no model found"), "{e}");
        std::fs::write(src.path().join("model.bin"), b"garbage").unwrap();
        let e = Catalog::new(models.path())
            .import(src.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a CTranslate2 model"), "{e}");
        assert!(!models.path().join("x").exists());
    }
}
