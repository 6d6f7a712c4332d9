//! The reference backend of wscluster: a stateful WebSocket service that keeps each user's
//! connections ([`ReferenceBackend`], and the `wsbackend` binary), and
//! [`InProcessBackends`], reference backends in the caller's own process behind a
//! [`Scaler`](discovery::Scaler), for the demo and for tests that need no other process.
#![forbid(unsafe_code)]

mod backend;
mod in_process;

pub use self::{backend::ReferenceBackend, in_process::InProcessBackends};
