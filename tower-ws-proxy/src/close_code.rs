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

/// Whether a gateway may send `code` in a close frame: the codes RFC 6455 §7.4 defines for
/// sending (1000–1003, 1007–1014) and those for applications and libraries (3000–4999), not
/// the ones that only report (1005, 1006, 1015) or are reserved.
///
/// ```
/// use tower_ws_proxy::close_code::{may_send, SERVICE_RESTART};
///
/// assert!(may_send(SERVICE_RESTART) && may_send(4000));
/// assert!(!may_send(1006) && !may_send(999) && !may_send(2000));
/// ```
pub const fn may_send(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
