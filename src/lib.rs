//! voice-transcriber: local Whisper transcription of Telegram voice messages.
//!
//! Two wings and the door between them:
//!
//! - [`whisper`] — the engine: an audio file in, segments of text out (audio decode, log-mel,
//!   model formats, the network and its kernels, the decoding loop, the models directory). It
//!   never names the daemon.
//! - [`daemon`] — the service: receiver, spool, worker, inference thread, heartbeat, state and
//!   config. A voice message's path: Telegram update → receiver → spool → worker → inference
//!   (the engine) → reply.
//! - [`telegram`] — the only room that knows grammers: the owner's account, its session file
//!   and login, behind the daemon's [`daemon::messenger`] interface.
//!
//! The binary (`src/main.rs`, `src/cli/`) parses the command line and wires these together.

pub mod daemon;
pub mod telegram;
pub mod whisper;
