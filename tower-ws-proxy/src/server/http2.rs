//! What one HTTP/2 connection may cost: its streams, header lists, windows and buffers, and
//! how many streams a client may reset before the server answers GOAWAY.

use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Bounds on one HTTP/2 connection (served over TLS when the client picks `h2` by ALPN).
/// Each WebSocket is one stream (RFC 8441), so `max_concurrent_streams` is also the most
/// WebSockets one connection carries.
///
/// ```
/// use tower_ws_proxy::server::{Http2Limits, HttpLimits};
///
/// let limits = HttpLimits::default();
/// assert_eq!(limits.http2.max_concurrent_streams, 100);
/// assert_eq!(limits.http2, Http2Limits::default());
/// ```
///
/// With the `serde` feature it reads from a config file (`[http.http2]` in the gateway's);
/// a field left out keeps its default:
///
/// ```toml
/// max_concurrent_streams = 100
/// stream_window = 262144
/// connection_window = 1048576
/// max_send_buffer = 65536
/// max_pending_resets = 20
/// keepalive_interval = "30s"
/// keepalive_timeout = "20s"
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Http2Limits {
    /// Streams (requests and WebSockets) open at once on one connection; the client is told
    /// in `SETTINGS_MAX_CONCURRENT_STREAMS` and a stream past it is refused. Default: 100.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::at_least_one_u32")
    )]
    pub max_concurrent_streams: u32,
    /// Bytes a client may send on one stream before the gateway reads them (the initial
    /// stream flow-control window). Default: 256 KiB.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::flow_window")
    )]
    pub stream_window: u32,
    /// Bytes a client may send on the whole connection before the gateway reads them.
    /// Default: 1 MiB.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::flow_window")
    )]
    pub connection_window: u32,
    /// Bytes queued toward the client on one stream before the writer waits for the client
    /// to open its window (a client that stops reading holds no more than this). Default:
    /// 64 KiB.
    pub max_send_buffer: usize,
    /// Streams the client may reset before the gateway accepted them, at once; past it the
    /// connection ends with GOAWAY `ENHANCE_YOUR_CALM` (the rapid-reset flood,
    /// CVE-2023-44487). Default: 20.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::at_least_one")
    )]
    pub max_pending_resets: usize,
    /// A PING every this long on an idle connection, so a vanished client is noticed.
    /// Default: 30 s; `"off"` sends none.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::off_or_duration")
    )]
    pub keepalive_interval: Option<Duration>,
    /// The PING's answer must come within this, or the connection is closed. Default: 20 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::positive")
    )]
    pub keepalive_timeout: Duration,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            max_send_buffer: 64 * 1024,
            max_pending_resets: 20,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl Http2Limits {
    /// hyper's HTTP/2 server with these bounds, the request head's (`max_head_bytes` as the
    /// header list size), and extended CONNECT on: WebSockets over HTTP/2 (RFC 8441).
    pub(super) fn builder(&self, max_head_bytes: usize) -> http2::Builder<TokioExecutor> {
        let mut http = http2::Builder::new(TokioExecutor::new());
        http.timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(u32::try_from(max_head_bytes).unwrap_or(u32::MAX))
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_send_buf_size(self.max_send_buffer)
            .max_pending_accept_reset_streams(self.max_pending_resets)
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout);
        http
    }
}
