//! Proxying WebSocket connections without decoding them: a frame-aware [`relay`] that
//! passes bytes through but knows where frames and messages end, so a close (or, later, an
//! upstream switch) can be injected between messages.
#![forbid(unsafe_code)]

pub mod frame;
mod relay;

pub use self::relay::{relay, RelayCommand, RelayCommands, RelayConfig, RelayHandle, RelayOutcome};
