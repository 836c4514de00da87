#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model (models/cache/<model>: model.bin, tokenizer.json) into
whisper.cpp's ggml files, for benches/per-message.sh: the same weights ours and faster-whisper
read, so the three engines differ only in their code.

  ct2_to_ggml.py MODEL_DIR OUT_DIR      writes OUT_DIR/ggml-<name>.bin (f16, the layout of
                                        whisper.cpp's own conversion) and ggml-<name>-q8_0.bin
                                        (what its quantizer makes of that file), <name> being
                                        MODEL_DIR's basename

Needs numpy. Layout, as whisper.cpp's `whisper_model_load` reads it (models/convert-pt-to-ggml.py
writes it): magic 0x67676d6c; 11 int32 hparams (n_vocab, n_audio_ctx, n_audio_state,
n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels,
ftype); the mel filter bank (n_mels, n_fft = 201, float32s); the vocabulary (count, then
length-prefixed raw token bytes; 50257 entries, specials excluded but <|endoftext|>); then each
tensor as (n_dims, name length, type, dims innermost first, name, data), named as in OpenAI's
PyTorch checkpoint. Matrices, conv kernels and the token embedding are f16; biases, layer norms,
conv biases (as [n, 1]) and both positional embeddings f32. In the q8_0 file every 2-D tensor
except the conv biases and positional embeddings is q8_0 (blocks of 32: an f16 scale and 32
int8), as whisper.cpp's quantizer (examples/quantize, `ggml_common_quantize_0`) does, and ftype
says 7 plus the quantization version 2 × 1000.
"""
import json
import os
import re
import struct
import sys

import numpy as np

GGML_MAGIC = 0x67676D6C
F32, F16, Q8_0 = 0, 1, 8          # ggml tensor types
FTYPE_F16, FTYPE_Q8_0 = 1, 7      # ggml file types
QNT_VERSION = 2                   # GGML_QNT_VERSION, times GGML_QNT_VERSION_FACTOR (1000)
N_TEXT_TOKENS = 50257             # vocabulary entries a ggml file carries
SAMPLE_RATE, N_FFT = 16000, 400


# --- CTranslate2 model.bin (version 6) --------------------------------------------------------
# ctranslate2/src/models/model.cc: strings are u16 length (counting a trailing NUL) + bytes;
# each variable is name, u8 rank, u32 dims, u8 dtype, u32 byte count, data; then aliases.
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path):
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def string():
        nonlocal pos
        (n,) = take("H")
        s = buf[pos:pos + n - 1].decode()
        pos += n
        return s

    (version,) = take("I")
    if version != 6:
        sys.exit(f"error: {path}: CTranslate2 model version {version}, expected 6")
    spec = string()
    take("I")  # spec revision
    if spec != "WhisperSpec":
        sys.exit(f"error: {path}: spec {spec}, expected WhisperSpec")
    variables = {}
    (count,) = take("I")
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        dims = take("I" * rank)
        dtype, nbytes = take("BI")
        if dtype not in CT2_DTYPES:
            sys.exit(f"error: {path}: {name} has CTranslate2 dtype {dtype}")
        variables[name] = np.frombuffer(buf, CT2_DTYPES[dtype], nbytes // np.dtype(CT2_DTYPES[dtype]).itemsize,
                                        pos).reshape(dims)
        pos += nbytes
    (count,) = take("I")
    for _ in range(count):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


# --- mel filter bank ---------------------------------------------------------------------------
# librosa.filters.mel(sr=16000, n_fft=400, n_mels=N) with its defaults (Slaney mel scale and
# area normalisation), step for step: openai-whisper's assets/mel_filters.npz was made with it.
def hz_to_mel(f):
    f = np.asanyarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mels = f / f_sp
    if mels.ndim:
        log_t = f >= min_log_hz
        mels[log_t] = min_log_mel + np.log(f[log_t] / min_log_hz) / logstep
    elif f >= min_log_hz:
        mels = min_log_mel + np.log(f / min_log_hz) / logstep
    return mels


def mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    freqs = f_sp * m
    log_t = m >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (m[log_t] - min_log_mel))
    return freqs


def mel_filters(n_mels):
    fftfreqs = np.fft.rfftfreq(n=N_FFT, d=1.0 / SAMPLE_RATE)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + N_FFT // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights + np.float32(0)  # -0.0 (the first bin of the first filter) as librosa's +0.0


# --- vocabulary --------------------------------------------------------------------------------
def gpt2_byte_decoder():
    """GPT-2's byte-level alphabet, reversed: printable stand-in character → byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def vocabulary(model_dir):
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {a["id"]: a["content"] for a in tok.get("added_tokens", [])}
    dec = gpt2_byte_decoder()
    out = []
    for i in range(N_TEXT_TOKENS):
        if i in by_id:
            out.append(bytes(dec[c] for c in by_id[i]))
        else:  # <|endoftext|> of the English-only vocabulary; an unused slot in the multilingual
            out.append(added.get(i, "").encode())
    return out


# --- tensors -----------------------------------------------------------------------------------
def tensors(v):
    """(OpenAI name, float32 array) in the order of OpenAI's checkpoint."""
    out = []

    def put(name, a):
        out.append((name, np.asarray(a, dtype=np.float32)))

    def linear(dst, src, bias=True):
        put(dst + ".weight", v[src + "/weight"])
        if bias:
            put(dst + ".bias", v[src + "/bias"])

    def norm(dst, src):
        put(dst + ".weight", v[src + "/gamma"])
        put(dst + ".bias", v[src + "/beta"])

    def fused(dst, src, parts):
        """Split a fused projection (query/key/value or key/value); the key has no bias."""
        ws = np.split(np.asarray(v[src + "/weight"]), len(parts))
        bs = np.split(np.asarray(v[src + "/bias"]), len(parts))
        for part, w, b in zip(parts, ws, bs):
            put(f"{dst}.{part}.weight", w)
            if part == "key":
                if np.any(b != 0):
                    sys.exit(f"error: {src}: non-zero key bias")
            else:
                put(f"{dst}.{part}.bias", b)

    def n_layers(side):
        return len({k.split("/")[1] for k in v if re.match(side + r"/layer_\d+/", k)})

    n_enc, n_dec = n_layers("encoder"), n_layers("decoder")
    put("encoder.positional_embedding", v["encoder/position_encodings/encodings"])
    put("encoder.conv1.weight", v["encoder/conv1/weight"])
    put("encoder.conv1.bias", np.asarray(v["encoder/conv1/bias"]).reshape(-1, 1))
    put("encoder.conv2.weight", v["encoder/conv2/weight"])
    put("encoder.conv2.bias", np.asarray(v["encoder/conv2/bias"]).reshape(-1, 1))
    for i in range(n_enc):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        fused(dst + ".attn", src + "/self_attention/linear_0", ["query", "key", "value"])
        linear(dst + ".attn.out", src + "/self_attention/linear_1")
        norm(dst + ".attn_ln", src + "/self_attention/layer_norm")
        linear(dst + ".mlp.0", src + "/ffn/linear_0")
        linear(dst + ".mlp.2", src + "/ffn/linear_1")
        norm(dst + ".mlp_ln", src + "/ffn/layer_norm")
    norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.positional_embedding", v["decoder/position_encodings/encodings"])
    put("decoder.token_embedding.weight", v["decoder/embeddings/weight"])
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        fused(dst + ".attn", src + "/self_attention/linear_0", ["query", "key", "value"])
        linear(dst + ".attn.out", src + "/self_attention/linear_1")
        norm(dst + ".attn_ln", src + "/self_attention/layer_norm")
        linear(dst + ".cross_attn.query", src + "/attention/linear_0")
        fused(dst + ".cross_attn", src + "/attention/linear_1", ["key", "value"])
        linear(dst + ".cross_attn.out", src + "/attention/linear_2")
        norm(dst + ".cross_attn_ln", src + "/attention/layer_norm")
        linear(dst + ".mlp.0", src + "/ffn/linear_0")
        linear(dst + ".mlp.2", src + "/ffn/linear_1")
        norm(dst + ".mlp_ln", src + "/ffn/layer_norm")
    norm("decoder.ln", "decoder/layer_norm")
    if not np.array_equal(v["decoder/projection/weight"], v["decoder/embeddings/weight"]):
        sys.exit("error: output projection not tied to the token embedding (whisper.cpp assumes it is)")
    return out, n_enc, n_dec


F32_NAMES = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
             "decoder.positional_embedding"}


def quantize_q8_0(a):
    """ggml's quantize_row_q8_0_ref in float32: per block of 32, d = amax / 127 (stored f16) and
    q = roundf(x * (1 / d)), rounding halves away from zero."""
    x = a.reshape(-1, 32).astype(np.float32)
    d = np.abs(x).max(axis=1) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    x0 = x * inv[:, None]
    q = np.trunc(x0)
    frac = x0 - q
    q += np.where(np.abs(frac) >= 0.5, np.sign(x0), 0)
    blocks = np.empty(len(x), dtype=[("d", "<f2"), ("qs", "i1", 32)])
    blocks["d"] = d.astype(np.float16)
    blocks["qs"] = q.astype(np.int8)
    return blocks.tobytes()


def write(path, hparams, filters, vocab, tensor_list, q8):
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        ftype = FTYPE_Q8_0 + QNT_VERSION * 1000 if q8 else FTYPE_F16
        f.write(struct.pack("<I", GGML_MAGIC))
        f.write(struct.pack("<11i", *hparams, ftype))
        f.write(struct.pack("<2i", *filters.shape))
        f.write(filters.astype("<f4").tobytes())
        f.write(struct.pack("<i", len(vocab)))
        for t in vocab:
            f.write(struct.pack("<i", len(t)) + t)
        for name, a in tensor_list:
            if a.ndim < 2 or name in F32_NAMES:
                ttype, data = F32, a.astype("<f4").tobytes()
            elif q8 and a.ndim == 2:
                ttype, data = Q8_0, quantize_q8_0(a.astype(np.float16).astype(np.float32))
            else:
                ttype, data = F16, a.astype("<f2").tobytes()
            key = name.encode()
            f.write(struct.pack("<3i", a.ndim, len(key), ttype))
            f.write(struct.pack(f"<{a.ndim}i", *reversed(a.shape)))
            f.write(key)
            f.write(data)
    os.replace(tmp, path)


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    model_dir, out_dir = argv
    name = os.path.basename(os.path.normpath(model_dir))
    v = read_ct2(os.path.join(model_dir, "model.bin"))
    tensor_list, n_enc, n_dec = tensors(v)
    emb = v["decoder/embeddings/weight"]
    enc_pe, dec_pe = v["encoder/position_encodings/encodings"], v["decoder/position_encodings/encodings"]
    n_mels = v["encoder/conv1/weight"].shape[1]
    hparams = [emb.shape[0], enc_pe.shape[0], enc_pe.shape[1], int(v["encoder/num_heads"]), n_enc,
               dec_pe.shape[0], dec_pe.shape[1], int(v["decoder/num_heads"]), n_dec, n_mels]
    filters, vocab = mel_filters(n_mels), vocabulary(model_dir)
    os.makedirs(out_dir, exist_ok=True)
    for q8, suffix in ((False, ""), (True, "-q8_0")):
        path = os.path.join(out_dir, f"ggml-{name}{suffix}.bin")
        write(path, hparams, filters, vocab, tensor_list, q8)
        print(f"{path}: {os.path.getsize(path):,} bytes", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
