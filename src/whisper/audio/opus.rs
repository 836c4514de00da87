//! Opus packet decoding for the demuxed OGG and MP4 tracks (symphonia has no Opus decoder).
//!
//! The container gives us raw Opus packets plus the identification header (`OpusHead`, RFC 7845
//! §5.1). This module turns the header into an `opus-rs` decoder and each packet into interleaved
//! 48 kHz `f32` samples, applying what `opusdec` applies: the header's output gain, the pre-skip
//! (encoder delay) at the start, and the per-packet end trim the demuxer derives from the final
//! granule position.

use std::panic::{self, AssertUnwindSafe};

use opus_rs::multistream::{ChannelMappingTable, MultistreamDecoder};
use opus_rs::OpusDecoder;

/// Opus always decodes to 48 kHz here: the encoder's band limits are defined at 48 kHz, `opusdec`
/// outputs 48 kHz by default, and decoding at a lower API rate would take libopus's cheaper
/// internal resampling path instead of our one high-quality resample to 16 kHz.
pub(super) const OPUS_RATE: u32 = 48_000;

/// The longest Opus packet is 120 ms (RFC 6716 §3.2.5); at 48 kHz that is 5760 frames.
const MAX_FRAMES_PER_PACKET: usize = 5760;

/// Channel mapping family 255 marks a discarded channel in the mapping table.
const SILENT_CHANNEL: u8 = 255;

/// The fields of an Opus identification header that decoding needs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OpusHead {
    pub channels: u8,
    /// Samples at 48 kHz to drop from the start of the decoded stream.
    pub pre_skip: u16,
    /// Output gain in Q7.8 dB.
    pub gain_q8: i16,
    pub mapping_family: u8,
    /// The channel mapping table (present for families other than 0): stream count, coupled
    /// stream count, then one mapping byte per channel.
    pub mapping_table: Vec<u8>,
}

impl OpusHead {
    /// Parses the header as stored in the container's codec extra data: `OpusHead` magic followed
    /// by the fields. OGG stores them little-endian (RFC 7845); MP4's `dOps` box stores the same
    /// fields big-endian (symphonia prepends the magic but keeps the box's byte order).
    pub fn parse(extra: &[u8], big_endian: bool) -> Result<Self, String> {
        const MIN_LEN: usize = 19;
        if extra.len() < MIN_LEN || &extra[..8] != b"OpusHead" {
            return Err("missing or short OpusHead identification header".into());
        }
        let u16_at = |i: usize| {
            let b = [extra[i], extra[i + 1]];
            if big_endian {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        };
        let version = extra[8];
        // RFC 7845: the upper nibble is the major version; only major version 0 is defined.
        if version > 0x0f {
            return Err(format!("unsupported OpusHead version {version}"));
        }
        let channels = extra[9];
        if channels == 0 {
            return Err("OpusHead declares zero channels".into());
        }
        let pre_skip = u16_at(10);
        let gain_q8 = u16_at(16) as i16;
        let mapping_family = extra[18];
        let mapping_table = match mapping_family {
            0 if channels <= 2 => Vec::new(),
            0 => {
                return Err(format!(
                    "mapping family 0 allows 1-2 channels, header says {channels}"
                ))
            }
            _ => {
                let table = extra
                    .get(19..19 + 2 + usize::from(channels))
                    .ok_or_else(|| "OpusHead channel mapping table is truncated".to_string())?;
                table.to_vec()
            }
        };
        Ok(OpusHead {
            channels,
            pre_skip,
            gain_q8,
            mapping_family,
            mapping_table,
        })
    }
}

enum Inner {
    /// Mapping family 0: one elementary stream with 1 or 2 channels.
    Single(Box<OpusDecoder>),
    /// Mapping family 1 (surround): several elementary streams routed to output channels.
    Multi(Box<MultistreamDecoder>),
}

/// Decodes the packets of one Opus track to interleaved 48 kHz samples.
pub(super) struct OpusTrackDecoder {
    head: OpusHead,
    inner: Inner,
    /// Reused output buffer for one packet (at most 120 ms × channels).
    buf: Vec<f32>,
    /// Pre-skip samples (per channel) still to drop.
    skip_left: usize,
    /// Linear output gain from the header, applied like `opusdec` does.
    gain: f32,
    /// Frames in the last packet that decoded: the best guess for a damaged packet's duration.
    last_frames: usize,
}

impl OpusTrackDecoder {
    pub fn new(head: OpusHead) -> Result<Self, String> {
        let inner = make_inner(&head)?;
        let channels = usize::from(head.channels);
        let gain = 10f32.powf(f32::from(head.gain_q8) / (20.0 * 256.0));
        Ok(OpusTrackDecoder {
            skip_left: usize::from(head.pre_skip),
            buf: vec![0.0; MAX_FRAMES_PER_PACKET * channels],
            inner,
            head,
            gain,
            last_frames: 0,
        })
    }

    pub fn channels(&self) -> usize {
        usize::from(self.head.channels)
    }

    /// Decodes one packet and returns its samples (interleaved) after trimming `trim_start` and
    /// `trim_end` frames and any remaining pre-skip. The slice may be empty.
    pub fn decode(
        &mut self,
        packet: &[u8],
        trim_start: usize,
        trim_end: usize,
    ) -> Result<&[f32], String> {
        // A zero-length packet would ask the decoder for concealment of an unknown duration; in a
        // container it can only be damage.
        if packet.is_empty() {
            return Err("empty packet".into());
        }
        let frames = self.run(packet, MAX_FRAMES_PER_PACKET)?;
        self.last_frames = frames;
        Ok(self.finish(frames, trim_start, trim_end))
    }

    /// Conceals a lost or undecodable packet (packet loss concealment) so the audio after it
    /// keeps its timing. `frames` is the duration the container derived from the packet's ToC
    /// byte; when that is 0 (the ToC itself is damaged) the previous packet's duration is used,
    /// as encoders keep the frame size constant in practice.
    pub fn conceal(
        &mut self,
        frames: usize,
        trim_start: usize,
        trim_end: usize,
    ) -> Result<&[f32], String> {
        let frames = if frames == 0 {
            self.last_frames
        } else {
            frames
        };
        // libopus only conceals whole 2.5 ms steps; clamp a damaged duration to what it accepts.
        let frames = frames.min(MAX_FRAMES_PER_PACKET) / 120 * 120;
        if frames == 0 {
            return Ok(&[]);
        }
        let decoded = self.run(&[], frames)?;
        Ok(self.finish(decoded, trim_start, trim_end))
    }

    /// Runs the decoder, turning a panic inside `opus-rs` on hostile input into an error: the
    /// engine decodes files from strangers and must not die on one. The decoder state is rebuilt
    /// after a panic because it may be half-updated.
    fn run(&mut self, packet: &[u8], frame_size: usize) -> Result<usize, String> {
        let buf = &mut self.buf;
        let inner = &mut self.inner;
        let result = panic::catch_unwind(AssertUnwindSafe(|| match inner {
            Inner::Single(dec) => dec.decode(packet, frame_size, buf),
            Inner::Multi(dec) => dec.decode(packet, frame_size, buf),
        }));
        match result {
            Ok(Ok(frames)) => Ok(frames.min(MAX_FRAMES_PER_PACKET)),
            Ok(Err(msg)) => Err(msg.to_string()),
            Err(_) => {
                self.inner = make_inner(&self.head)?;
                Err("Opus decoder panicked on this packet".into())
            }
        }
    }

    fn finish(&mut self, frames: usize, trim_start: usize, trim_end: usize) -> &[f32] {
        let channels = self.channels();
        let end = frames.saturating_sub(trim_end);
        let mut start = trim_start.min(end);
        let skip = self.skip_left.min(end - start);
        self.skip_left -= skip;
        start += skip;
        let out = &mut self.buf[start * channels..end * channels];
        if self.gain != 1.0 {
            out.iter_mut().for_each(|s| *s *= self.gain);
        }
        out
    }
}

fn make_inner(head: &OpusHead) -> Result<Inner, String> {
    let rate = OPUS_RATE as i32;
    match head.mapping_family {
        0 => {
            let dec = OpusDecoder::new(rate, usize::from(head.channels)).map_err(str::to_string)?;
            Ok(Inner::Single(Box::new(dec)))
        }
        1 => {
            let table = ChannelMappingTable::parse(1, head.channels, &head.mapping_table)
                .ok_or_else(|| "bad Opus channel mapping table".to_string())?;
            // opus-rs indexes its decode buffer with the mapping bytes unchecked, so reject tables
            // that point past the decoded channels instead of letting a crafted header panic.
            let decoded = usize::from(table.coupled_count) * 2
                + usize::from(table.stream_count.saturating_sub(table.coupled_count));
            let valid = table.stream_count > 0
                && table.coupled_count <= table.stream_count
                && table
                    .mapping
                    .iter()
                    .all(|&m| m == SILENT_CHANNEL || usize::from(m) < decoded);
            if !valid {
                return Err("bad Opus channel mapping table".into());
            }
            let dec = MultistreamDecoder::new(rate, table).map_err(str::to_string)?;
            Ok(Inner::Multi(Box::new(dec)))
        }
        family => Err(format!("unsupported Opus channel mapping family {family}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_bytes(big_endian: bool) -> Vec<u8> {
        let mut v = b"OpusHead".to_vec();
        v.push(1);
        v.push(2);
        let (pre_skip, rate, gain) = (312u16, 48_000u32, -256i16);
        if big_endian {
            v.extend(pre_skip.to_be_bytes());
            v.extend(rate.to_be_bytes());
            v.extend(gain.to_be_bytes());
        } else {
            v.extend(pre_skip.to_le_bytes());
            v.extend(rate.to_le_bytes());
            v.extend(gain.to_le_bytes());
        }
        v.push(0);
        v
    }

    #[test]
    fn parses_ogg_and_mp4_byte_orders() {
        for be in [false, true] {
            let head = OpusHead::parse(&head_bytes(be), be).expect("valid header");
            assert_eq!(head.channels, 2);
            assert_eq!(head.pre_skip, 312);
            assert_eq!(head.gain_q8, -256);
            assert_eq!(head.mapping_family, 0);
        }
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(OpusHead::parse(b"OpusHead", false).is_err());
        assert!(OpusHead::parse(&[0u8; 19], false).is_err());
        let mut three_channels_family0 = head_bytes(false);
        three_channels_family0[9] = 3;
        assert!(OpusHead::parse(&three_channels_family0, false).is_err());
        let mut truncated_table = head_bytes(false);
        truncated_table[18] = 1;
        assert!(OpusHead::parse(&truncated_table, false).is_err());
    }

    #[test]
    fn garbage_packets_are_errors_not_panics() {
        let head = OpusHead::parse(&head_bytes(false), false).expect("valid header");
        let mut dec = OpusTrackDecoder::new(head).expect("decoder");
        // A deterministic pseudo-random byte soup of many lengths and ToC values.
        let mut x = 0x1234_5678u32;
        for len in 1..400usize {
            let pkt: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if let Ok(samples) = dec.decode(&pkt, 0, 0) {
                assert!(samples.iter().all(|s| s.is_finite()));
            }
        }
        assert!(dec.decode(&[], 0, 0).is_err());
    }
}
