//! The WebSocket close codes the proxy sends (RFC 6455 §7.4.1, IANA registry), named once.

/// The peer is going away: the gateway shuts down, or a connection moved off an upstream.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the protocol (framing).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A close frame without a status code, as reported (never sent).
pub const NO_STATUS: u16 = 1005;
/// A message or frame is larger than the gateway accepts.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The service is restarting: clients reconnect (and reach the key's new owner).
pub const SERVICE_RESTART: u16 = 1012;
