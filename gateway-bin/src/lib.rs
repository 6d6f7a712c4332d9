//! The reference gateway and its embedded demo: wiring of the library crates.
//!
//! The gateway is a composition of reusable layers: [`tower_hashring`] picks the backend
//! by key, [`tower_ws_proxy`] forwards HTTP and relays WebSockets, axum serves them.

mod admin;
pub mod admin_access;
mod cluster;
pub mod config;
mod dashboard;
pub mod demo;
mod digest;
pub mod gateway;
mod metrics;
mod public;
pub mod upgrade;

/// The README's Rust blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
