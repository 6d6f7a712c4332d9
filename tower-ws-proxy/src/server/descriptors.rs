//! File descriptors: the limit raised at start, and the default connection caps derived
//! from it, so a full server sheds new connections instead of failing accepts, health
//! checks and admin requests.

/// Descriptors kept out of the connection caps: listeners, the admin API, health checks,
/// discovery clients, pooled backend connections, logs.
pub const RESERVED: u64 = 256;

/// The descriptor limit after [`raise_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// The soft limit before.
    pub was: u64,
    /// The soft limit now (the hard limit, when raising worked).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

impl DescriptorLimit {
    /// The default caps: (WebSockets, public connections before an upgrade). A WebSocket
    /// holds two descriptors (client and backend), an HTTP connection up to two as well.
    /// Connections before an upgrade get a twentieth of what is left after [`RESERVED`]
    /// (at most 512: they are short-lived), WebSockets the rest.
    ///
    /// ```
    /// use tower_ws_proxy::server::descriptors::DescriptorLimit;
    ///
    /// let limit = DescriptorLimit { was: 1024, soft: 20_000, hard: 20_000 };
    /// let (websockets, http) = limit.default_caps();
    /// assert_eq!((websockets, http), (9360, 512));
    /// assert!(2 * websockets + 2 * http <= 20_000 - 256);
    /// ```
    pub fn default_caps(&self) -> (usize, usize) {
        let budget = self.soft.saturating_sub(RESERVED).max(10);
        let http = (budget / 20).clamp(1, 512);
        let websockets = (budget - 2 * http) / 2;
        (
            usize::try_from(websockets).unwrap_or(usize::MAX).max(1),
            usize::try_from(http).unwrap_or(usize::MAX).max(1),
        )
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what nginx's `worker_rlimit_nofile`
/// and HAProxy's automatic `ulimit-n` do).
/// Logs the limits, or why they could not be read or raised.
pub fn raise_limit() -> std::io::Result<DescriptorLimit> {
    let raised = rlimit::getrlimit(rlimit::Resource::NOFILE).and_then(|(was, hard)| {
        let soft = rlimit::increase_nofile_limit(hard)?;
        Ok(DescriptorLimit { was, soft, hard })
    });
    match &raised {
        Ok(limit) => tracing::info!(
            was = limit.was,
            soft = limit.soft,
            hard = limit.hard,
            "descriptor limit"
        ),
        Err(error) => tracing::warn!(%error, "cannot read or raise the descriptor limit"),
    }
    raised
}
