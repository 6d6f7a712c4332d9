//! Who may use the admin API, and what it may be made to do: a bearer token on every route,
//! no cross-site writes, and no backend address that points the gateway at itself or outside
//! the allowed networks.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{Arc, OnceLock},
};

use axum::{
    body::Body,
    http::{header, HeaderMap, Method, Request, Response, StatusCode},
};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_http::validate_request::ValidateRequest;

/// The shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The bearer token of the admin API. A presented token is compared by its SHA-256, digest
/// to digest in constant time; the token itself is kept only to present to the other
/// gateway replicas (`[cluster]`), which share it.
///
/// ```
/// use gateway_bin::admin_access::AdminToken;
///
/// let token = AdminToken::new("correct-horse-battery-staple")?;
/// assert!(token.matches("correct-horse-battery-staple"));
/// assert!(!token.matches("correct-horse"));
/// assert!(AdminToken::new("short").is_err());
/// # Ok::<(), gateway_bin::admin_access::WeakToken>(())
/// ```
#[derive(Clone)]
pub struct AdminToken {
    digest: Arc<[u8; 32]>,
    bearer: Arc<str>,
}

/// A token too short to be one.
#[derive(Debug, thiserror::Error)]
#[error("an admin token needs at least {MIN_TOKEN_LEN} characters")]
pub struct WeakToken;

impl AdminToken {
    /// The token `token` (surrounding whitespace, e.g. a file's newline, is not part of it).
    pub fn new(token: &str) -> Result<Self, WeakToken> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(WeakToken);
        }
        Ok(Self {
            digest: Arc::new(Sha256::digest(token.as_bytes()).into()),
            bearer: token.into(),
        })
    }

    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&*self.digest).into()
    }

    /// The token, as this gateway presents it to the other replicas' admin APIs.
    pub(crate) fn bearer(&self) -> &str {
        &self.bearer
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// How the admin API is protected: `[admin]` in the config file.
///
/// ```
/// use gateway_bin::config::GatewayConfig;
///
/// let config = GatewayConfig::parse(r#"
///     [admin]
///     token = "correct-horse-battery-staple"   # or token = { file = "/run/secrets/admin" }
///     backend_networks = ["10.0.0.0/8"]
///     tls = false                              # true: https:// with [tls]'s certificates
/// "#)?;
/// assert!(config.admin.token.unwrap().matches("correct-horse-battery-staple"));
/// # Ok::<(), gateway_bin::config::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminAccess {
    /// Every admin route requires `Authorization: Bearer <token>`, given inline or as
    /// `{ file = "…" }`. Without one the admin listener must be on loopback: the gateway
    /// refuses to start otherwise.
    #[serde(deserialize_with = "crate::config::values::admin_token")]
    pub token: Option<AdminToken>,
    /// A backend added through the API must have an address in one of these networks
    /// (empty: any address that is not one of the gateway's own listeners).
    pub backend_networks: Vec<IpNet>,
    /// Serve the admin listener (API, dashboard, `/metrics`) over TLS too, with `[tls]`'s
    /// certificates (and their reloads). Default: off (it is on loopback by default).
    pub tls: bool,
}

/// Checks every admin request before a handler sees it: the token (401), that it is not a
/// cross-site request (403: a foreign `Origin`, or `Sec-Fetch-Site: cross-site`), and that a
/// write carries JSON (415), which no HTML form and no "simple" cross-site request can send.
#[derive(Clone, Debug)]
pub(crate) struct AdminGuard {
    token: Option<AdminToken>,
}

impl AdminGuard {
    pub(crate) fn new(token: Option<AdminToken>) -> Self {
        Self { token }
    }
}

impl<B> ValidateRequest<B> for AdminGuard {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response<Body>> {
        let headers = request.headers();
        if let Some(token) = &self.token {
            let presented = bearer(headers);
            if !presented.is_some_and(|presented| token.matches(presented)) {
                let mut refusal = refuse(
                    StatusCode::UNAUTHORIZED,
                    "the admin API needs `Authorization: Bearer <token>` (the gateway's admin token)",
                );
                let challenge =
                    header::HeaderValue::from_static("Bearer realm=\"wscluster-admin\"");
                refusal
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge);
                return Err(refusal);
            }
        }
        if let Some(why) = cross_site(headers, request.uri()) {
            return Err(refuse(StatusCode::FORBIDDEN, &why));
        }
        let writes = matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::PATCH
        );
        if writes && !is_json(headers) {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "admin writes take `Content-Type: application/json`",
            ));
        }
        Ok(())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Why a request comes from another site, if it does. Its own host is `Host`, or over HTTP/2
/// the URI's authority (`:authority`).
fn cross_site(headers: &HeaderMap, uri: &http::Uri) -> Option<String> {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Some("cross-site requests to the admin API are refused".into());
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    if origin_host.is_some() && origin_host == host {
        return None;
    }
    Some(format!(
        "requests from origin `{origin}` are refused: the admin API answers only its own origin"
    ))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn refuse(status: StatusCode, reason: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{reason}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The gateway's own listeners, known once they are bound: a backend added through the API
/// may not be one of them (the gateway would proxy to itself).
#[derive(Clone, Debug, Default)]
pub(crate) struct OwnListeners(Arc<OnceLock<Vec<SocketAddr>>>);

impl OwnListeners {
    /// The listeners, the public one first.
    pub(crate) fn set(&self, listeners: Vec<SocketAddr>) {
        let _ = self.0.set(listeners);
    }

    /// The public listener, once bound.
    pub(crate) fn public(&self) -> Option<SocketAddr> {
        self.0.get()?.first().copied()
    }

    /// Whether `address` reaches one of them: the same address, or the same port on an
    /// address of this host where a listener is bound to all of them.
    fn reached_by(&self, address: SocketAddr) -> Option<SocketAddr> {
        let listeners = self.0.get()?;
        listeners.iter().copied().find(|listener| {
            listener.port() == address.port()
                && (listener.ip() == address.ip()
                    || (listener.ip().is_unspecified() && is_local(address.ip())))
        })
    }
}

/// Whether `ip` is an address of this host: one it can bind.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::TcpListener::bind((ip, 0)).is_ok()
}

/// The range of `ip` if it is link-local or a well-known cloud metadata service
/// (169.254.169.254 for AWS, GCP, Azure and OCI; fd00:ec2::254 for AWS over IPv6;
/// 100.100.100.200 for Alibaba; 168.63.129.16, Azure's WireServer): a backend there would let
/// a user reach the host's credentials through the gateway.
fn outside_the_cluster(ip: IpAddr) -> Option<IpNet> {
    // The services first: a network that names all of link-local does not name them.
    const RANGES: [&str; 6] = [
        "169.254.169.254/32",
        "fd00:ec2::254/128",
        "100.100.100.200/32",
        "168.63.129.16/32",
        "169.254.0.0/16",
        "fe80::/10",
    ];
    RANGES
        .iter()
        .map(|range| range.parse::<IpNet>().expect("a valid built-in range"))
        .find(|range| range.contains(&ip))
}

/// Why `address` may not become a backend through the API, if it may not.
pub(crate) fn refuse_backend_address(
    address: SocketAddr,
    own: &OwnListeners,
    networks: &[IpNet],
) -> Option<String> {
    if address.ip().is_unspecified() || address.port() == 0 {
        return Some(format!("{address} is not an address a backend can have"));
    }
    if let Some(listener) = own.reached_by(address) {
        return Some(format!(
            "{address} is the gateway's own listener {listener}: it would proxy to itself"
        ));
    }
    let ip = match address.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address.ip(), IpAddr::V4),
        IpAddr::V4(_) => address.ip(),
    };
    if let Some(special) = outside_the_cluster(ip) {
        // Only a configured network inside that range lets it in: `0.0.0.0/0` does not.
        let named = networks
            .iter()
            .any(|net| net.contains(&ip) && special.contains(net));
        if !named {
            return Some(format!(
                "{address} is a {special} address (link-local or a cloud metadata service), \
                 never a backend unless the backend networks name it"
            ));
        }
    }
    if !networks.is_empty() && !networks.iter().any(|net| net.contains(&ip)) {
        let allowed: Vec<String> = networks.iter().map(ToString::to_string).collect();
        return Some(format!(
            "{address} is outside the networks backends may be added from ({})",
            allowed.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_reaching_an_own_listener_is_refused() {
        let own = OwnListeners::default();
        own.set(vec![
            "127.0.0.1:7000".parse().unwrap(),
            "0.0.0.0:7001".parse().unwrap(),
        ]);
        let refused = |a: &str| refuse_backend_address(a.parse().unwrap(), &own, &[]);
        assert!(refused("127.0.0.1:7000").is_some());
        assert!(
            refused("127.0.0.1:7001").is_some(),
            "all addresses reach 0.0.0.0"
        );
        assert!(refused("0.0.0.0:7100").is_some());
        assert!(refused("127.0.0.1:0").is_some());
        assert!(refused("127.0.0.1:7100").is_none());
        assert!(
            refused("127.0.0.2:7000").is_none(),
            "another loopback address"
        );
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused_unless_named() {
        let own = OwnListeners::default();
        let refused = |a: &str, networks: &[IpNet]| {
            refuse_backend_address(a.parse().unwrap(), &own, networks)
        };
        for address in [
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "[fe80::1]:7100",
            "[fd00:ec2::254]:80",
            "100.100.100.200:80",
        ] {
            let why = refused(address, &[]).unwrap_or_else(|| panic!("{address} allowed"));
            assert!(why.contains("metadata"), "{why}");
            let everything: Vec<IpNet> =
                vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
            assert!(
                refused(address, &everything).is_some(),
                "{address} under /0"
            );
        }
        let named: Vec<IpNet> = vec!["169.254.10.0/24".parse().unwrap()];
        assert!(refused("169.254.10.5:7100", &named).is_none());
        assert!(refused("169.254.169.254:80", &named).is_some());
        let link_local: Vec<IpNet> = vec!["169.254.0.0/16".parse().unwrap()];
        assert!(refused("169.254.10.5:7100", &link_local).is_none());
        assert!(
            refused("169.254.169.254:80", &link_local).is_some(),
            "not named by the /16"
        );
        assert!(refused("168.63.129.16:80", &[]).is_some());
        assert!(
            refused("100.100.100.201:80", &[]).is_none(),
            "next to it is fine"
        );
    }

    #[test]
    fn the_allow_list_is_checked() {
        let networks: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let own = OwnListeners::default();
        let refused = |a: &str| refuse_backend_address(a.parse().unwrap(), &own, &networks);
        assert!(refused("10.1.2.3:7100").is_none());
        let why = refused("192.168.1.1:7100").unwrap();
        assert!(why.contains("10.0.0.0/8"), "{why}");
    }

    #[test]
    fn only_the_own_origin_may_write() {
        let mut headers = HeaderMap::new();
        let path = http::Uri::from_static("/admin/backends");
        headers.insert(header::HOST, "127.0.0.1:7001".parse().unwrap());
        assert!(
            cross_site(&headers, &path).is_none(),
            "no Origin: curl, scripts"
        );
        headers.insert(header::ORIGIN, "http://127.0.0.1:7001".parse().unwrap());
        assert!(cross_site(&headers, &path).is_none());
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&headers, &path)
            .unwrap()
            .contains("evil.example"));
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(cross_site(&headers, &path).is_some());

        // HTTP/2: no Host, the authority is the URI's.
        let mut headers = HeaderMap::new();
        let h2 = http::Uri::from_static("https://127.0.0.1:7001/admin/backends");
        headers.insert(header::ORIGIN, "https://127.0.0.1:7001".parse().unwrap());
        assert!(cross_site(&headers, &h2).is_none());
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(cross_site(&headers, &h2).is_some());
    }
}
