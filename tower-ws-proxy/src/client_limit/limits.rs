//! What one client may open.

use std::num::NonZeroU32;

use ipnet::IpNet;

/// What one client (an IPv4 address, or an IPv6 /64) may open: WebSockets at once, and
/// WebSocket handshakes per second with a burst. Clients behind one NAT share one address,
/// and so one allowance: size `burst` for a whole office reconnecting at once. `None` is no limit. Clients in `exempt` have none;
/// `trusted_proxies` are the peers whose `X-Forwarded-For` names the client (a load balancer
/// in front of the gateway).
///
/// ```
/// use std::num::NonZeroU32;
/// use tower_ws_proxy::client_limit::ClientLimits;
///
/// let mut limits = ClientLimits::default();
/// limits.websockets = Some(100);
/// limits.handshakes_per_second = NonZeroU32::new(20);
/// limits.exempt = vec!["10.0.0.0/8".parse().unwrap()];
/// assert_eq!(limits.burst(), 20);
/// ```
///
/// With the `serde` feature it reads as
/// `{ websockets = 100, handshakes_per_second = 20, burst = 40, exempt = ["10.0.0.0/8"],
/// trusted_proxies = ["192.0.2.10/32"] }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct ClientLimits {
    /// WebSockets one client may hold open at once; past it, 429.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::some_at_least_one")
    )]
    pub websockets: Option<usize>,
    /// WebSocket handshakes one client may start per second, on average; past it, 429 with
    /// the seconds until the next is allowed.
    pub handshakes_per_second: Option<NonZeroU32>,
    /// How many handshakes may come at once before the rate applies (default: one second's
    /// worth).
    pub burst: Option<NonZeroU32>,
    /// Clients without limits (health checkers, a trusted office network).
    pub exempt: Vec<IpNet>,
    /// Peers whose `X-Forwarded-For` is believed: the client is the address nearest to the
    /// gateway in it that is not itself a trusted proxy. From any other peer the header is
    /// ignored and the peer is the client.
    pub trusted_proxies: Vec<IpNet>,
}

impl ClientLimits {
    /// The burst in effect.
    pub fn burst(&self) -> u32 {
        self.burst
            .or(self.handshakes_per_second)
            .map_or(1, NonZeroU32::get)
    }

    /// Whether any limit is set.
    pub fn limits_anything(&self) -> bool {
        self.websockets.is_some() || self.handshakes_per_second.is_some()
    }
}
