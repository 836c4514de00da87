//! Model directories: which of the three weight formats a directory holds, and loading it into
//! one naming scheme.
//!
//! Users arrive with whatever they have: a faster-whisper (CTranslate2) download, a Hugging Face
//! `openai/whisper-*` checkout, or a GGUF file we quantized. All three are read into [`Weights`]
//! under Hugging Face's `WhisperForConditionalGeneration` names, so the network code
//! ([`crate::whisper::model`]) has exactly one way to find a tensor. The format is detected from the files
//! present, never from the directory's name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::whisper::ct2::{Ct2Error, Ct2Model};

/// Bytes a float tensor's elements occupy.
pub(crate) fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Why a model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{0}: no model found (expected model.bin, model.safetensors or model.gguf)")]
    NoModel(PathBuf),
    #[error("{0}: missing (every model directory needs a tokenizer.json)")]
    NoTokenizer(PathBuf),
    #[error(transparent)]
    Ct2(#[from] Ct2Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The on-disk layout of a model directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// faster-whisper / CTranslate2: `model.bin`, `config.json`, `tokenizer.json`.
    Ct2,
    /// Hugging Face: `model.safetensors`, `config.json`, `tokenizer.json`.
    Safetensors,
    /// Our quantized export: `model.gguf`, `config.json`, `tokenizer.json`.
    Gguf,
}

impl Format {
    /// File holding the weights for this format.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Ct2 => "model.bin",
            Format::Safetensors => "model.safetensors",
            Format::Gguf => "model.gguf",
        }
    }

    /// Detects the format of `dir` from the files present.
    pub fn detect(dir: &Path) -> Result<Self, WeightsError> {
        [Format::Gguf, Format::Safetensors, Format::Ct2]
            .into_iter()
            .find(|f| dir.join(f.file_name()).is_file())
            .ok_or_else(|| WeightsError::NoModel(dir.to_path_buf()))
    }
}

/// Named tensors in Hugging Face naming, whatever file they came from. A quantized model keeps
/// its matrices in `qtensors` and its norms, biases, convolutions and embeddings in `tensors`.
///
/// Float tensors keep the dtype they were stored in: a faster-whisper download is f16 and
/// stays f16 here, so loading never holds an f32 copy of the model (twice its file). The network
/// widens what it computes with in f32 itself ([`crate::whisper::model`]).
#[derive(Default)]
pub struct Weights {
    /// Float tensors (f32 or f16) by name.
    pub tensors: HashMap<String, Tensor>,
    /// Quantized matrices by name (GGUF models only).
    pub qtensors: HashMap<String, Arc<QTensor>>,
}

impl Weights {
    fn missing(name: &str) -> candle_core::Error {
        candle_core::Error::Msg(format!("weight {name} is missing"))
    }

    /// Bytes the weights occupy in memory.
    pub fn bytes(&self) -> usize {
        let floats: usize = self.tensors.values().map(tensor_bytes).sum();
        let quantized: usize = self
            .qtensors
            .values()
            .map(|q| q.storage_size_in_bytes())
            .sum();
        floats + quantized
    }

    /// True when `name` exists in either form.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.qtensors.contains_key(name)
    }

    /// Shape of `name`.
    pub fn shape(&self, name: &str) -> candle_core::Result<Vec<usize>> {
        if let Some(t) = self.tensors.get(name) {
            return Ok(t.dims().to_vec());
        }
        if let Some(q) = self.qtensors.get(name) {
            return Ok(q.shape().dims().to_vec());
        }
        Err(Self::missing(name))
    }

    /// `name` as a float tensor in its stored dtype (dequantized to f32 when stored quantized).
    pub fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        if let Some(t) = self.tensors.get(name) {
            return Ok(t.clone());
        }
        if let Some(q) = self.qtensors.get(name) {
            return q.dequantize(&Device::Cpu);
        }
        Err(Self::missing(name))
    }

    /// `name` as an f32 tensor.
    pub fn get_f32(&self, name: &str) -> candle_core::Result<Tensor> {
        self.get(name)?.to_dtype(DType::F32)
    }

    /// Reads the weights of `dir` in `format`.
    pub fn load(dir: &Path, format: Format) -> Result<Self, WeightsError> {
        let path = dir.join(format.file_name());
        match format {
            Format::Ct2 => Self::from_ct2(&Ct2Model::open(&path)?, &path),
            Format::Safetensors => Self::from_safetensors(&path),
            Format::Gguf => Self::from_gguf(&path),
        }
    }

    fn from_safetensors(path: &Path) -> Result<Self, WeightsError> {
        let invalid = |e: candle_core::Error| WeightsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let raw = candle_core::safetensors::load(path, &Device::Cpu).map_err(invalid)?;
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, t) in raw {
            // `WhisperModel` checkpoints omit the `model.` prefix of
            // `WhisperForConditionalGeneration`; `proj_out` is tied to the token embedding.
            let name = if name.starts_with("encoder.") || name.starts_with("decoder.") {
                format!("model.{name}")
            } else {
                name
            };
            if name == "proj_out.weight" {
                continue;
            }
            let t = match t.dtype() {
                DType::F32 | DType::F16 => t,
                _ => t.to_dtype(DType::F32).map_err(invalid)?,
            };
            tensors.insert(name, t);
        }
        Ok(Self {
            tensors,
            qtensors: HashMap::new(),
        })
    }

    fn from_gguf(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |e: candle_core::Error| WeightsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let content = gguf_file::Content::read(&mut file).map_err(invalid)?;
        let mut w = Self::default();
        for name in content.tensor_infos.keys() {
            let q = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(invalid)?;
            match q.dtype() {
                GgmlDType::F16 => {
                    // As stored: `dequantize_f16` would go through an f32 copy.
                    let t = Tensor::from_raw_buffer(
                        &q.data().map_err(invalid)?,
                        DType::F16,
                        q.shape().dims(),
                        &Device::Cpu,
                    )
                    .map_err(invalid)?;
                    w.tensors.insert(name.clone(), t);
                }
                GgmlDType::F32 | GgmlDType::BF16 => {
                    let t = q.dequantize(&Device::Cpu).map_err(invalid)?;
                    w.tensors.insert(name.clone(), t);
                }
                _ => {
                    w.qtensors.insert(name.clone(), Arc::new(q));
                }
            }
        }
        Ok(w)
    }

    /// Maps CTranslate2's `WhisperSpec` variables onto Hugging Face names. CTranslate2 fuses
    /// self-attention Q/K/V into one `linear_0` (the key's bias slot is zeros) and
    /// cross-attention K/V into `linear_1`; they are split back here.
    fn from_ct2(m: &Ct2Model, path: &Path) -> Result<Self, WeightsError> {
        if m.spec != "WhisperSpec" {
            return Err(WeightsError::Invalid {
                path: path.to_path_buf(),
                reason: format!("holds a {} model, not Whisper", m.spec),
            });
        }
        let invalid = |e: candle_core::Error| WeightsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut out: HashMap<String, Tensor> = HashMap::new();
        let mut put = |name: String, t: Tensor| {
            out.insert(name, t);
        };
        let copy = |put: &mut dyn FnMut(String, Tensor),
                    from: &str,
                    to: &str|
         -> Result<(), WeightsError> {
            put(to.to_string(), m.tensor(from)?);
            Ok(())
        };
        let ln = |put: &mut dyn FnMut(String, Tensor),
                  from: &str,
                  to: &str|
         -> Result<(), WeightsError> {
            copy(put, &format!("{from}/gamma"), &format!("{to}.weight"))?;
            copy(put, &format!("{from}/beta"), &format!("{to}.bias"))
        };
        let lin = |put: &mut dyn FnMut(String, Tensor),
                   from: &str,
                   to: &str|
         -> Result<(), WeightsError> {
            copy(put, &format!("{from}/weight"), &format!("{to}.weight"))?;
            copy(put, &format!("{from}/bias"), &format!("{to}.bias"))
        };
        // Splits a fused projection into equal row blocks named by `names`, each copied into
        // its own storage (so the fused buffer is freed and no view carries an offset).
        let split = |put: &mut dyn FnMut(String, Tensor),
                     from: &str,
                     to: &str,
                     names: &[&str],
                     biased: &[bool]|
         -> Result<(), WeightsError> {
            let w = m.tensor(&format!("{from}/weight"))?;
            let b = m.tensor(&format!("{from}/bias"))?;
            let rows = w.dim(0).map_err(invalid)? / names.len();
            for (i, (n, has_bias)) in names.iter().zip(biased).enumerate() {
                let wi = w.narrow(0, i * rows, rows).map_err(invalid)?;
                put(
                    format!("{to}.{n}.weight"),
                    wi.force_contiguous().map_err(invalid)?,
                );
                if *has_bias {
                    let bi = b.narrow(0, i * rows, rows).map_err(invalid)?;
                    put(
                        format!("{to}.{n}.bias"),
                        bi.force_contiguous().map_err(invalid)?,
                    );
                }
            }
            Ok(())
        };
        for side in ["encoder", "decoder"] {
            let hf = format!("model.{side}");
            copy(
                &mut put,
                &format!("{side}/position_encodings/encodings"),
                &format!("{hf}.embed_positions.weight"),
            )?;
            ln(
                &mut put,
                &format!("{side}/layer_norm"),
                &format!("{hf}.layer_norm"),
            )?;
            let n_layers = (0..)
                .take_while(|i| m.contains(&format!("{side}/layer_{i}/ffn/linear_0/weight")))
                .count();
            for i in 0..n_layers {
                let c = format!("{side}/layer_{i}");
                let h = format!("{hf}.layers.{i}");
                ln(
                    &mut put,
                    &format!("{c}/self_attention/layer_norm"),
                    &format!("{h}.self_attn_layer_norm"),
                )?;
                split(
                    &mut put,
                    &format!("{c}/self_attention/linear_0"),
                    &format!("{h}.self_attn"),
                    &["q_proj", "k_proj", "v_proj"],
                    &[true, false, true],
                )?;
                lin(
                    &mut put,
                    &format!("{c}/self_attention/linear_1"),
                    &format!("{h}.self_attn.out_proj"),
                )?;
                ln(
                    &mut put,
                    &format!("{c}/ffn/layer_norm"),
                    &format!("{h}.final_layer_norm"),
                )?;
                lin(&mut put, &format!("{c}/ffn/linear_0"), &format!("{h}.fc1"))?;
                lin(&mut put, &format!("{c}/ffn/linear_1"), &format!("{h}.fc2"))?;
                if side == "decoder" {
                    ln(
                        &mut put,
                        &format!("{c}/attention/layer_norm"),
                        &format!("{h}.encoder_attn_layer_norm"),
                    )?;
                    lin(
                        &mut put,
                        &format!("{c}/attention/linear_0"),
                        &format!("{h}.encoder_attn.q_proj"),
                    )?;
                    split(
                        &mut put,
                        &format!("{c}/attention/linear_1"),
                        &format!("{h}.encoder_attn"),
                        &["k_proj", "v_proj"],
                        &[false, true],
                    )?;
                    lin(
                        &mut put,
                        &format!("{c}/attention/linear_2"),
                        &format!("{h}.encoder_attn.out_proj"),
                    )?;
                }
            }
        }
        for conv in ["conv1", "conv2"] {
            lin(
                &mut put,
                &format!("encoder/{conv}"),
                &format!("model.encoder.{conv}"),
            )?;
        }
        copy(
            &mut put,
            "decoder/embeddings/weight",
            "model.decoder.embed_tokens.weight",
        )?;
        Ok(Self {
            tensors: out,
            qtensors: HashMap::new(),
        })
    }

    /// Quantizes the linear-layer matrices to `dtype` with candle's own quantizer; norms,
    /// biases, convolutions and embeddings stay in their float dtype. A matrix whose rows do not split into
    /// `dtype`'s blocks (k-quants need multiples of 256; tiny is 384 wide) falls back to q8_0
    /// (blocks of 32), and the names of those fallbacks are returned.
    pub fn quantize(&self, dtype: GgmlDType) -> candle_core::Result<(Self, Vec<String>)> {
        let mut out = Self::default();
        let mut fallbacks = Vec::new();
        for (name, t) in &self.tensors {
            let is_matrix = t.rank() == 2
                && name.ends_with(".weight")
                && (name.contains("_proj.") || name.contains(".fc1.") || name.contains(".fc2."));
            if !is_matrix {
                out.tensors.insert(name.clone(), t.clone());
                continue;
            }
            let row = t.dim(1)?;
            let chosen = if row % dtype.block_size() == 0 {
                dtype
            } else {
                fallbacks.push(name.clone());
                GgmlDType::Q8_0
            };
            // QTensor::quantize reads the whole backing buffer and ignores a view's offset, so a
            // row block split off a fused CTranslate2 matrix needs its own storage.
            let q = QTensor::quantize(&t.force_contiguous()?, chosen)?;
            out.qtensors.insert(name.clone(), Arc::new(q));
        }
        fallbacks.sort();
        Ok((out, fallbacks))
    }

    /// Writes all weights to a GGUF file (float tensors as f32 or f16 entries, as held).
    pub fn save_gguf(&self, path: &Path) -> Result<(), WeightsError> {
        let invalid = |e: candle_core::Error| WeightsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut floats = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let dtype = match t.dtype() {
                DType::F16 => GgmlDType::F16,
                _ => GgmlDType::F32,
            };
            floats.push((name.as_str(), QTensor::quantize(t, dtype).map_err(invalid)?));
        }
        let mut all: Vec<(&str, &QTensor)> = floats.iter().map(|(n, q)| (*n, q)).collect();
        all.extend(self.qtensors.iter().map(|(n, q)| (n.as_str(), q.as_ref())));
        all.sort_by_key(|(n, _)| *n);
        let arch = gguf_file::Value::String("whisper".into());
        let tmp = path.with_extension("gguf.partial");
        let mut file = std::fs::File::create(&tmp).map_err(|source| WeightsError::Io {
            path: tmp.clone(),
            source,
        })?;
        gguf_file::write(&mut file, &[("general.architecture", &arch)], &all).map_err(invalid)?;
        std::fs::rename(&tmp, path).map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes float weights as `model.safetensors` (Hugging Face layout).
    pub fn save_safetensors(&self, path: &Path) -> Result<(), WeightsError> {
        candle_core::safetensors::save(&self.tensors, path).map_err(|e| WeightsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// Decoding settings stored with the weights: which tokens a model must never emit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelConfig {
    /// Tokens suppressed at every step (`suppress_ids` in CTranslate2, `suppress_tokens` in HF).
    pub suppress: Vec<u32>,
    /// Tokens suppressed at the first sampled position (`suppress_ids_begin` /
    /// `begin_suppress_tokens`): the blank and end-of-text.
    pub suppress_begin: Vec<u32>,
}

impl ModelConfig {
    /// Reads `config.json` (either flavour); a missing file or key gives empty lists.
    pub fn load(dir: &Path) -> Result<Self, WeightsError> {
        let path = dir.join("config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(WeightsError::Io { path, source }),
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| WeightsError::Invalid {
                path: path.clone(),
                reason: format!("not valid JSON: {e}"),
            })?;
        let ids = |keys: &[&str]| -> Vec<u32> {
            keys.iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_array()))
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as u32)
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Self {
            suppress: ids(&["suppress_ids", "suppress_tokens"]),
            suppress_begin: ids(&["suppress_ids_begin", "begin_suppress_tokens"]),
        })
    }
}

/// Path of the tokenizer of a model directory, checked to exist.
pub fn tokenizer_path(dir: &Path) -> Result<PathBuf, WeightsError> {
    let p = dir.join("tokenizer.json");
    if p.is_file() {
        Ok(p)
    } else {
        Err(WeightsError::NoTokenizer(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whisper::model::tests::random_weights;
    use crate::whisper::model::Whisper;
    use candle_core::IndexOp;

    fn logits(w: &Weights) -> Vec<f32> {
        let mut m = Whisper::new(w).unwrap();
        let mel = Tensor::ones((1, 80, 3000), DType::F32, &Device::Cpu).unwrap();
        let audio = m.encoder.forward(&mel).unwrap();
        m.decoder.set_audio(&audio).unwrap();
        let toks = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        m.decoder
            .forward(&toks, &[2])
            .unwrap()
            .i((0, 0))
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn safetensors_round_trip_is_exact() {
        let w = random_weights(300);
        let dir = tempfile::tempdir().unwrap();
        w.save_safetensors(&dir.path().join("model.safetensors"))
            .unwrap();
        let back = Weights::load(dir.path(), Format::Safetensors).unwrap();
        assert_eq!(logits(&w), logits(&back));
    }

    #[test]
    fn gguf_q8_model_loads_and_stays_close_to_float() {
        let w = random_weights(300);
        let (q, fallbacks) = w.quantize(GgmlDType::Q8_0).unwrap();
        assert!(fallbacks.is_empty(), "64-wide rows fit q8_0 blocks");
        // k-quants need 256-wide rows: every 64-wide matrix falls back, fc2 (256 wide) does not.
        let (_, k_fallbacks) = w.quantize(GgmlDType::Q4K).unwrap();
        assert!(k_fallbacks.iter().all(|n| !n.ends_with("fc2.weight")));
        assert!(k_fallbacks.iter().any(|n| n.ends_with("q_proj.weight")));
        let dir = tempfile::tempdir().unwrap();
        q.save_gguf(&dir.path().join("model.gguf")).unwrap();
        let back = Weights::load(dir.path(), Format::Gguf).unwrap();
        assert!(!back.qtensors.is_empty());
        assert!(back
            .qtensors
            .contains_key("model.decoder.layers.0.fc1.weight"));
        assert!(back
            .tensors
            .contains_key("model.decoder.embed_tokens.weight"));
        let (a, b) = (logits(&w), logits(&back));
        let scale = a.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            err < 0.05 * scale,
            "q8_0 error {err} vs logit scale {scale}"
        );
        assert_ne!(a, b, "quantization must actually change the weights");
    }
}
