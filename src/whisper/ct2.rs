//! Reader for CTranslate2's `model.bin`, the weight file of faster-whisper models.
//!
//! faster-whisper is what most people run Whisper with on small boards, and its converted models
//! are everywhere; reading them directly means a user can point us at the same directory. The
//! format (CTranslate2 `src/models/model.cc`, `Model::load`) is little-endian:
//!
//! ```text
//! u32 version (6) | str spec name | u32 revision | u32 n_vars
//! n_vars × ( str name | u8 rank | u32 dim × rank | u8 dtype | u32 n_bytes | bytes )
//! u32 n_aliases × ( str alias | str target )
//! ```
//!
//! where `str` is a u16 length (counting a trailing NUL) followed by the bytes. dtype is
//! 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. Only the index is parsed here; bytes stay in the
//! memory map until a tensor is asked for. Loading does not hold two copies of the weights: a
//! tensor keeps the dtype it is stored in (f16 for every faster-whisper download), and its bytes
//! are copied out a megabyte at a time, each run's pages dropped from the map (`MADV_DONTNEED`)
//! once copied — a page of a mapped file counts in the resident set as much as a page of heap,
//! and the token embedding alone is 40–53 MB.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use memmap2::{Mmap, UncheckedAdvice};

/// Why a `model.bin` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a CTranslate2 model ({reason})")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: variable {name}: {reason}")]
    Variable {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: variable {name}: {reason}")]
    Tensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

/// Where one variable's bytes live in the file.
#[derive(Debug, Clone)]
struct Entry {
    /// Dimensions, outermost first.
    shape: Vec<usize>,
    /// CTranslate2 dtype code.
    dtype: u8,
    /// Byte range of the data inside the map.
    start: usize,
    end: usize,
}

/// An opened `model.bin`: the spec name, the variable index, and the mapped file.
pub struct Ct2Model {
    path: PathBuf,
    /// e.g. `WhisperSpec`.
    pub spec: String,
    /// Format version read from the header.
    pub version: u32,
    vars: HashMap<String, Entry>,
    map: Mmap,
}

/// Bytes of the map copied out before their pages are dropped: at most this much of the file is
/// resident at a time, whatever the size of the tensor.
const RESIDENT_RUN: usize = 1 << 20;

/// The format versions this reader understands (the layout above has not changed since 5).
const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 5..=6;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated: needed {n} bytes at offset {} of {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        let bytes = self.take(n)?;
        let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

fn dtype_size(code: u8) -> Option<usize> {
    match code {
        0 | 3 => Some(4),
        1 => Some(1),
        2 | 4 | 5 => Some(2),
        _ => None,
    }
}

impl Ct2Model {
    /// Maps `path` and reads its variable index.
    pub fn open(path: &Path) -> Result<Self, Ct2Error> {
        let io = |source| Ct2Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the file is only read; a concurrent writer could change bytes under us, which
        // at worst yields wrong weights, never memory unsafety in safe code reading a &[u8].
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let format = |reason: String| Ct2Error::Format {
            path: path.to_path_buf(),
            reason,
        };
        let mut c = Cursor { buf: &map, pos: 0 };
        let version = c.u32().map_err(format)?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(format(format!(
                "bad magic/version {version:#x}, expected 5 or 6"
            )));
        }
        let spec = c.string().map_err(format)?;
        let _revision = c.u32().map_err(format)?;
        let n_vars = c.u32().map_err(format)? as usize;
        if n_vars > 100_000 {
            return Err(format(format!("implausible variable count {n_vars}")));
        }
        let mut vars = HashMap::with_capacity(n_vars);
        for _ in 0..n_vars {
            let (name, entry) = Self::read_entry(&mut c).map_err(format)?;
            vars.insert(name, entry);
        }
        let n_aliases = c.u32().map_err(format)? as usize;
        for _ in 0..n_aliases {
            let alias = c.string().map_err(format)?;
            let target = c.string().map_err(format)?;
            if let Some(e) = vars.get(&target).cloned() {
                vars.insert(alias, e);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            spec,
            version,
            vars,
            map,
        })
    }

    fn read_entry(c: &mut Cursor) -> Result<(String, Entry), String> {
        let name = c.string()?;
        let rank = c.u8()? as usize;
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(c.u32()? as usize);
        }
        let dtype = c.u8()?;
        let n_bytes = c.u32()? as usize;
        let size = dtype_size(dtype).ok_or_else(|| format!("{name}: unknown dtype {dtype}"))?;
        let elems: usize = shape.iter().product();
        if elems * size != n_bytes {
            return Err(format!(
                "{name}: shape {shape:?} does not match {n_bytes} bytes"
            ));
        }
        let start = c.pos;
        c.take(n_bytes)?;
        Ok((
            name,
            Entry {
                shape,
                dtype,
                start,
                end: c.pos,
            },
        ))
    }

    /// Names of all variables (aliases included).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// True when the file has a variable called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// The shape of variable `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.vars.get(name).map(|e| e.shape.as_slice())
    }

    /// Loads variable `name`: f32 and f16 as stored, bf16 widened to f32, int8 dequantized to
    /// f32 with its per-row `<name>_scale` (CTranslate2 stores `w_int8 = round(w * scale)`).
    pub fn tensor(&self, name: &str) -> Result<Tensor, Ct2Error> {
        let e = self.vars.get(name).ok_or_else(|| Ct2Error::Variable {
            path: self.path.clone(),
            name: name.to_string(),
            reason: "missing".into(),
        })?;
        let wrap = |e: candle_core::Error| Ct2Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason: e.to_string(),
        };
        let dev = Device::Cpu;
        let shape = e.shape.as_slice();
        let t = match e.dtype {
            0 => Tensor::from_vec(
                self.elements(e, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                shape,
                &dev,
            ),
            4 => Tensor::from_vec(
                self.elements(e, 2, |b| f16::from_le_bytes([b[0], b[1]])),
                shape,
                &dev,
            ),
            // No kernel computes in bf16: widened here.
            5 => Tensor::from_vec(
                self.elements(e, 2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                shape,
                &dev,
            ),
            1 => {
                let scale_name = format!("{name}_scale");
                let scale = self
                    .tensor(&scale_name)?
                    .to_dtype(DType::F32)
                    .map_err(wrap)?;
                let vals = self.elements(e, 1, |b| b[0] as i8 as f32);
                let rows = e.shape.first().copied().unwrap_or(1);
                Tensor::from_vec(vals, e.shape.as_slice(), &dev).and_then(|w| {
                    let s = scale.reshape((rows, 1))?;
                    w.reshape((rows, ()))?
                        .broadcast_div(&s)?
                        .reshape(e.shape.as_slice())
                })
            }
            3 => Tensor::from_vec(
                self.elements(e, 4, |b| {
                    i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
                }),
                shape,
                &dev,
            ),
            d => {
                return Err(Ct2Error::Variable {
                    path: self.path.clone(),
                    name: name.to_string(),
                    reason: format!("dtype {d} is not supported for weights"),
                })
            }
        }
        .map_err(wrap)?;
        Ok(t)
    }

    /// Decodes the `width`-byte elements of `e` with `decode`, [`RESIDENT_RUN`] bytes at a time,
    /// dropping each run's pages from the map once decoded.
    fn elements<T>(&self, e: &Entry, width: usize, decode: impl Fn(&[u8]) -> T) -> Vec<T> {
        let mut out = Vec::with_capacity((e.end - e.start) / width);
        let mut at = e.start;
        while at < e.end {
            let end = (at + RESIDENT_RUN).min(e.end);
            out.extend(self.map[at..end].chunks_exact(width).map(&decode));
            // SAFETY: the map is read-only and private, and nothing borrows these bytes any more
            // (they were copied out above): dropping the pages only makes a later read fetch them
            // again from the file, with the same contents.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, at, end - at)
            };
            at = end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn var(out: &mut Vec<u8>, name: &str, shape: &[u32], dtype: u8, data: &[u8]) {
        string(out, name);
        out.push(shape.len() as u8);
        for d in shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.push(dtype);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }

    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        let f32s: Vec<u8> = [1.0f32, -2.0, 3.5, 0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        var(&mut b, "a/weight", &[2, 2], 0, &f32s);
        let f16s: Vec<u8> = [0.5f32, 4.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        var(&mut b, "b/bias", &[2], 4, &f16s);
        var(&mut b, "c/weight", &[1, 2], 1, &[10u8, (-20i8) as u8]);
        // c/weight_scale would make 4 variables; the count above says 3, so add it by alias trick:
        b.extend_from_slice(&1u32.to_le_bytes());
        string(&mut b, "d/weight");
        string(&mut b, "a/weight");
        b
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn reads_f32_f16_and_aliases() {
        let f = write(&sample());
        let m = Ct2Model::open(f.path()).unwrap();
        assert_eq!(m.spec, "WhisperSpec");
        assert_eq!(
            m.tensor("a/weight").unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![1.0, -2.0], vec![3.5, 0.25]]
        );
        // f16 stays f16: widening is the network's business, not the loader's.
        let b = m.tensor("b/bias").unwrap();
        assert_eq!(b.dtype(), DType::F16);
        assert_eq!(
            b.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
            vec![0.5, 4.0]
        );
        assert_eq!(
            m.tensor("d/weight").unwrap().to_vec2::<f32>().unwrap(),
            m.tensor("a/weight").unwrap().to_vec2::<f32>().unwrap()
        );
        // int8 without its scale is a clear error, not a panic.
        let err = m.tensor("c/weight").unwrap_err().to_string();
        assert!(
            err.contains("c/weight_scale") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_a_format_error() {
        let full = sample();
        for cut in [0, 3, 10, 40, full.len() - 1] {
            let f = write(&full[..cut]);
            let err = Ct2Model::open(f.path())
                .err()
                .expect("must fail")
                .to_string();
            assert!(err.contains("not a CTranslate2 model"), "cut {cut}: {err}");
        }
    }

    #[test]
    fn wrong_magic_is_named() {
        let mut b = sample();
        b[0..4].copy_from_slice(b"PK\x03\x04");
        let f = write(&b);
        let err = Ct2Model::open(f.path()).err().unwrap().to_string();
        assert!(err.contains("bad magic/version"), "{err}");
    }
}
