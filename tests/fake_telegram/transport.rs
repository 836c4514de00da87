//! The "full" TCP transport, as grammers' pool speaks it: every packet is
//! `length (4, LE, counts all four parts) · sequence number (4, LE, per direction from 0) ·
//! payload · CRC32 of the three before (4, LE)`. There is no header byte on connect.
//! A negative length (4 bytes alone) is a transport error, e.g. -404 for an unknown key.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest packet accepted from the client (its own limit is about 1 MiB).
const MAX_PACKET: usize = 2 * 1024 * 1024;

/// Why a packet could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The connection closed or failed.
    Io(std::io::Error),
    /// The length field is impossible.
    BadLength(i32),
    /// The sequence number is not the next one.
    BadSeq { expected: u32, got: u32 },
    /// The checksum does not match.
    BadCrc,
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "i/o: {e}"),
            FrameError::BadLength(n) => write!(f, "bad length {n}"),
            FrameError::BadSeq { expected, got } => {
                write!(f, "bad seq {got} (expected {expected})")
            }
            FrameError::BadCrc => write!(f, "bad crc"),
        }
    }
}

/// Reads packets, checking sequence numbers and checksums.
pub struct FrameReader<R> {
    inner: R,
    seq: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner, seq: 0 }
    }

    /// The next payload.
    pub async fn read(&mut self) -> Result<Vec<u8>, FrameError> {
        let mut head = [0u8; 8];
        self.inner.read_exact(&mut head[..4]).await?;
        let len = i32::from_le_bytes(head[..4].try_into().unwrap());
        if len < 12 || len as usize > MAX_PACKET || len % 4 != 0 {
            return Err(FrameError::BadLength(len));
        }
        self.inner.read_exact(&mut head[4..]).await?;
        let seq = u32::from_le_bytes(head[4..].try_into().unwrap());
        let mut rest = vec![0u8; len as usize - 8];
        self.inner.read_exact(&mut rest).await?;
        let (payload, crc) = rest.split_at(rest.len() - 4);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head);
        hasher.update(payload);
        if hasher.finalize().to_le_bytes() != crc {
            return Err(FrameError::BadCrc);
        }
        if seq != self.seq {
            return Err(FrameError::BadSeq {
                expected: self.seq,
                got: seq,
            });
        }
        self.seq += 1;
        Ok(payload.to_vec())
    }
}

/// Writes packets with their sequence numbers and checksums.
pub struct FrameWriter<W> {
    inner: W,
    seq: u32,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter { inner, seq: 0 }
    }

    /// Sends one payload (a multiple of 4 bytes).
    pub async fn write(&mut self, payload: &[u8]) -> std::io::Result<()> {
        assert!(payload.len().is_multiple_of(4));
        let len = (payload.len() + 12) as u32;
        let mut packet = Vec::with_capacity(len as usize);
        packet.extend_from_slice(&len.to_le_bytes());
        packet.extend_from_slice(&self.seq.to_le_bytes());
        packet.extend_from_slice(payload);
        let crc = crc32fast::hash(&packet);
        packet.extend_from_slice(&crc.to_le_bytes());
        self.seq += 1;
        self.inner.write_all(&packet).await?;
        self.inner.flush().await
    }

    /// Sends a transport error (a negative length alone), e.g. 404 for an unknown key.
    pub async fn write_error(&mut self, status: i32) -> std::io::Result<()> {
        self.inner.write_all(&(-status).to_le_bytes()).await?;
        self.inner.flush().await
    }
}
