//! A WebSocket relayed by `tower-ws-proxy`, as the migrator moves it.

use std::{fmt, sync::Arc};

use http::{header, request, HeaderMap, HeaderName, HeaderValue};
use tower_hashring::NodeId;
use tower_ws_proxy::{
    ConnectionHandle, OpenedConnection, RelayHandle, SwitchError, Upstream, WebSocketAnswer,
};

use crate::{
    dial::DialRetry, Fallback, FallbackKind, Migrate, MigrateFuture, MigrationPolicy,
    MigrationSecret, Outcome, MIGRATION_SIGNATURE,
};

/// The largest request head kept for a live move; a connection opened by a larger one can
/// only reconnect. (The server's own head limit is normally far below it.)
const MAX_KEPT_HEAD: usize = 16 * 1024;

/// Carries why a connection cannot move live across an upgrade's handover, among the
/// headers its handle is remade from in the new process.
const LIVE_BLOCKER: HeaderName = HeaderName::from_static("x-wscluster-live-blocker");

/// Tells the new owner of a live-migrated connection where its user came from, so it can
/// restore state.
pub const MIGRATED_FROM: HeaderName = HeaderName::from_static("x-wscluster-migrated-from");

/// A proxied WebSocket that can be moved live: its relay, the request that opened it (to
/// dial the new owner the same way), and why a live move is impossible, if it is.
///
/// [`MigrateLayer`](crate::MigrateLayer) has the proxy register one for every WebSocket it
/// establishes; a WebSocket opened through no migration layer gets a plain one, which can
/// only reconnect.
///
/// ```
/// use tower_ws_migrate::ProxiedConnection;
///
/// // A 101 that negotiated permessage-deflate with context takeover: a live move would
/// // break the compression context, so this connection can only reconnect.
/// let mut headers = http::HeaderMap::new();
/// headers.insert("sec-websocket-extensions", "permessage-deflate".parse().unwrap());
/// assert!(ProxiedConnection::live_blocker(&headers).is_some());
/// ```
#[derive(Clone)]
pub struct ProxiedConnection {
    relay: RelayHandle,
    request: CompactHead,
    protocol: Option<HeaderValue>,
    live_blocker: Option<String>,
    upstreams: Arc<dyn UpstreamLookup>,
    signing: Option<Arc<(Box<[u8]>, MigrationSecret)>>,
    policy: Option<Arc<MigrationPolicy>>,
}

impl fmt::Debug for ProxiedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxiedConnection")
            .field("head_bytes", &self.request.0.len())
            .field("live_blocker", &self.live_blocker)
            .finish_non_exhaustive()
    }
}

impl ProxiedConnection {
    /// A connection opened by `request`, answered with `response_headers`, relayed by
    /// `relay`; `upstreams` finds a new owner's service to dial.
    pub fn new(
        relay: RelayHandle,
        request: &request::Parts,
        response_headers: &HeaderMap,
        upstreams: Arc<dyn UpstreamLookup>,
    ) -> Self {
        let head = CompactHead::new(request);
        let too_large = (head.0.len() > MAX_KEPT_HEAD)
            .then(|| format!("the request head is over {MAX_KEPT_HEAD} bytes"));
        Self {
            relay,
            request: if too_large.is_some() {
                CompactHead::empty()
            } else {
                head
            },
            // Copied too: the backend's value shares the handshake's read buffer.
            protocol: response_headers
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()),
            live_blocker: too_large
                .or_else(|| {
                    let handed_over = response_headers.get(LIVE_BLOCKER)?;
                    Some(String::from_utf8_lossy(handed_over.as_bytes()).into_owned())
                })
                .or_else(|| Self::live_blocker(response_headers)),
            upstreams,
            signing: None,
            policy: None,
        }
    }

    /// Moves this connection by `policy` rather than by the migrator's.
    pub fn with_policy(mut self, policy: Option<Arc<MigrationPolicy>>) -> Self {
        self.policy = policy;
        self
    }

    /// Signs live moves of this connection's `key` with `secret`
    /// ([`MIGRATION_SIGNATURE`]), so the new owner can check that the move is real.
    pub fn signed(mut self, key: &[u8], secret: MigrationSecret) -> Self {
        self.signing = Some(Arc::new((key.into(), secret)));
        self
    }

    /// Why a connection with these negotiated headers cannot move live: an extension that
    /// keeps state across messages (permessage-deflate with context takeover, or one we do
    /// not know), which a new backend could not continue.
    pub fn live_blocker(response_headers: &HeaderMap) -> Option<String> {
        for value in response_headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
            let value = String::from_utf8_lossy(value.as_bytes());
            for extension in value.split(',') {
                let mut params = extension.split(';').map(str::trim);
                let name = params.next().unwrap_or_default();
                let params: Vec<&str> = params.collect();
                let stateless = name.eq_ignore_ascii_case("permessage-deflate")
                    && ["server_no_context_takeover", "client_no_context_takeover"]
                        .iter()
                        .all(|p| params.iter().any(|q| q.eq_ignore_ascii_case(p)));
                if !stateless {
                    return Some(format!(
                        "the negotiated extension `{}` keeps state across messages",
                        extension.trim()
                    ));
                }
            }
        }
        None
    }

    /// Dials `to` with the original request (again, a few times, after a failure a moment
    /// may cure: [`DialRetry`]) and switches the relay to it.
    async fn move_live(self, policy: MigrationPolicy, from: NodeId, to: NodeId) -> Outcome {
        if self.upstreams.upstream(&to).is_none() {
            let why = Fallback::new(FallbackKind::NoNewOwner, format!("{to} has no service"));
            return self.reconnect(&policy, why);
        }
        let request = self.live_request(&from, &to);
        let dialed = DialRetry::DEFAULT
            .run(|| async {
                // Looked up on every attempt: the ring may have dropped `to` meanwhile.
                match self.upstreams.upstream(&to) {
                    Some(upstream) => upstream.open_websocket(&request).await.map(Some),
                    None => Ok(None),
                }
            })
            .await;
        let peer = match dialed {
            Ok(Some(WebSocketAnswer {
                response,
                upgraded: Some(peer),
            })) => {
                let protocol = response.headers().get(header::SEC_WEBSOCKET_PROTOCOL);
                if protocol != self.protocol.as_ref() {
                    let why = format!("{to} chose another subprotocol");
                    return self
                        .reconnect(&policy, Fallback::new(FallbackKind::ProtocolMismatch, why));
                }
                peer
            }
            Ok(Some(answer)) => {
                let why = format!("{to} answered {}", answer.response.status());
                return self.reconnect(&policy, Fallback::new(FallbackKind::Refused, why));
            }
            Ok(None) => {
                let why = format!("{to} left the ring while it was being dialed");
                return self.reconnect(&policy, Fallback::new(FallbackKind::NoNewOwner, why));
            }
            Err(error) => {
                let why = format!("dialing {to}: {error}");
                return self.reconnect(&policy, Fallback::new(FallbackKind::DialFailed, why));
            }
        };
        match self.relay.switch_to(peer).await {
            Ok(()) => Outcome::Moved,
            Err(error @ SwitchError::Interrupted) => {
                Outcome::FellBack(Fallback::new(FallbackKind::Interrupted, error.to_string()))
            }
            // The relay goes on with the old backend: close it the policy's way instead.
            Err(error @ SwitchError::NoBoundary) => self.reconnect(
                &policy,
                Fallback::new(FallbackKind::NoBoundary, error.to_string()),
            ),
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }

    /// The client's original request, as the new owner `to` is dialed with it: where the
    /// user comes from, and the move signed where a secret is set.
    fn live_request(&self, from: &NodeId, to: &NodeId) -> request::Parts {
        let mut request = self.request.to_parts();
        if let Ok(from) = HeaderValue::from_str(from.as_str()) {
            request.headers.insert(MIGRATED_FROM, from);
        }
        if let Some(signing) = &self.signing {
            let (key, secret) = &**signing;
            let signature = secret.sign_now(key, from.as_str(), to.as_str());
            if let Ok(value) = HeaderValue::from_str(&signature) {
                request.headers.insert(MIGRATION_SIGNATURE, value);
            }
        }
        request
    }

    fn reconnect(&self, policy: &MigrationPolicy, why: Fallback) -> Outcome {
        let (code, reason) = policy.close();
        self.relay.close(code, reason);
        Outcome::FellBack(why)
    }
}

/// The request head a live move sends again, in one allocation of its own: the path and
/// query, then `name:value` per header, each line ending in `\n` (which neither can
/// contain). hyper's parsed values share the connection's whole read buffer, and a
/// `HeaderMap` costs an allocation per value plus its tables, for as long as the WebSocket
/// lasts. Hop-by-hop headers are not kept: the dial sets its own.
#[derive(Clone)]
struct CompactHead(Arc<[u8]>);

impl CompactHead {
    fn new(request: &request::Parts) -> Self {
        let path = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // Sized for every header: the `Arc` below is an exact copy anyway, so one pass
        // that skips the hop-by-hop ones (read in place: a copy of the map to strip would
        // cost every handshake a dozen allocations) is enough.
        let size = path.len()
            + 1
            + request
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 2)
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(path.as_bytes());
        bytes.push(b'\n');
        for (name, value) in tower_ws_proxy::end_to_end_headers(&request.headers) {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.push(b':');
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(b'\n');
        }
        Self(bytes.into())
    }

    fn empty() -> Self {
        Self(Arc::from(&[][..]))
    }

    fn to_parts(&self) -> request::Parts {
        let mut lines = self.0.split(|b| *b == b'\n');
        let uri = lines
            .next()
            .and_then(|path| http::Uri::try_from(path).ok())
            .unwrap_or_default();
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(&line[colon + 1..]),
            ) {
                headers.append(name, value);
            }
        }
        let (mut head, ()) = http::Request::new(()).into_parts();
        head.uri = uri;
        head.headers = headers;
        head
    }
}

impl ConnectionHandle for ProxiedConnection {
    fn relay(&self) -> &RelayHandle {
        &self.relay
    }

    fn plain(opened: &OpenedConnection<'_>) -> Self {
        Self {
            relay: opened.handle.clone(),
            request: CompactHead::empty(),
            protocol: None,
            live_blocker: Some("it was opened through no migration layer".into()),
            upstreams: Arc::new(|_: &NodeId| -> Option<Upstream> { None }),
            signing: None,
            policy: None,
        }
    }

    /// The kept head, and the subprotocol and the reason it cannot move live (if any) as
    /// the 101's headers: [`ProxiedConnection::new`] in the new process makes the same.
    fn opened_by(&self) -> Option<(request::Parts, HeaderMap)> {
        let mut response = HeaderMap::new();
        if let Some(protocol) = &self.protocol {
            response.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        if let Some(blocker) = &self.live_blocker {
            let value = HeaderValue::from_str(blocker)
                .unwrap_or(HeaderValue::from_static("it cannot move live"));
            response.insert(LIVE_BLOCKER, value);
        }
        Some((self.request.to_parts(), response))
    }
}

impl Migrate for ProxiedConnection {
    fn policy(&self) -> Option<Arc<MigrationPolicy>> {
        self.policy.clone()
    }

    fn migrate(
        &self,
        policy: &MigrationPolicy,
        from: &NodeId,
        to: Option<&NodeId>,
    ) -> MigrateFuture {
        if self.relay.is_finished() {
            let outcome = Outcome::Failed("the connection already ended".into());
            return Box::pin(std::future::ready(outcome));
        }
        let outcome = match (policy, to, &self.live_blocker) {
            (MigrationPolicy::Live { .. }, Some(to), None) => {
                let this = self.clone();
                return Box::pin(this.move_live(policy.clone(), from.clone(), to.clone()));
            }
            (MigrationPolicy::Live { .. }, None, _) => {
                let why = Fallback::new(FallbackKind::NoNewOwner, "the ring is empty");
                self.reconnect(policy, why)
            }
            (MigrationPolicy::Live { .. }, _, Some(blocker)) => {
                let why = Fallback::new(FallbackKind::StatefulExtension, blocker.clone());
                self.reconnect(policy, why)
            }
            _ => {
                let (code, reason) = policy.close();
                self.relay.close(code, reason);
                Outcome::Moved
            }
        };
        Box::pin(std::future::ready(outcome))
    }
}

/// Finds the service of a backend, to dial a connection's new owner.
///
/// Implemented by `SharedHashRing<Upstream, _>` (its latest route table) and by closures
/// `Fn(&NodeId) -> Option<Upstream>`.
///
/// ```
/// use std::sync::Arc;
/// use tower_hashring::NodeId;
/// use tower_ws_migrate::UpstreamLookup;
/// use tower_ws_proxy::{Upstream, UpstreamConfig};
///
/// let lookup: Arc<dyn UpstreamLookup> = Arc::new(|id: &NodeId| {
///     (id.as_str() == "a").then(|| Upstream::new("127.0.0.1:7100", UpstreamConfig::default()))
/// });
/// assert!(lookup.upstream(&NodeId::from("b")).is_none());
/// ```
pub trait UpstreamLookup: Send + Sync + 'static {
    /// The service of backend `id`, if it is a member.
    fn upstream(&self, id: &NodeId) -> Option<Upstream>;
}

impl<F> UpstreamLookup for F
where
    F: Fn(&NodeId) -> Option<Upstream> + Send + Sync + 'static,
{
    fn upstream(&self, id: &NodeId) -> Option<Upstream> {
        self(id)
    }
}

impl<E: Send + Sync + 'static> UpstreamLookup for tower_hashring::SharedHashRing<Upstream, E> {
    fn upstream(&self, id: &NodeId) -> Option<Upstream> {
        self.service(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_upstreams() -> Arc<dyn UpstreamLookup> {
        Arc::new(|_: &NodeId| -> Option<Upstream> { None })
    }

    #[test]
    fn the_kept_head_is_one_allocation_that_gives_back_the_request() {
        let request = http::Request::get("/connect/7?room=a%20b")
            .header("cookie", "session=1")
            .header("sec-websocket-protocol", "chat, v2")
            .header("x-forwarded-for", "10.0.0.1, 127.0.0.1")
            .header("connection", "upgrade, x-hop")
            .header("x-hop", "dropped")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let head = CompactHead::new(&request);
        let again = head.to_parts();
        assert_eq!(again.uri, "/connect/7?room=a%20b");
        let mut expected = request.headers.clone();
        tower_ws_proxy::strip_hop_by_hop(&mut expected);
        assert_eq!(again.headers, expected);
        assert!(again.headers.get("x-hop").is_none());
        assert!(head.0.len() < 150, "{} bytes", head.0.len());
    }

    #[test]
    fn a_head_over_the_bound_is_not_kept_and_can_only_reconnect() {
        let request = http::Request::get("/connect/7")
            .header("cookie", "c".repeat(MAX_KEPT_HEAD))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let (handle, _commands) = RelayHandle::new();
        let connection =
            ProxiedConnection::new(handle, &request, &HeaderMap::new(), no_upstreams());
        assert!(connection.request.0.is_empty());
        let blocker = connection.live_blocker.expect("a live move is blocked");
        assert!(blocker.contains("request head"), "{blocker}");
    }

    /// What a handle gives for an upgrade's handover makes the same handle in the new
    /// process: the head, the subprotocol, and a blocked connection stays blocked (even one
    /// whose blocker was its head's size, which is not kept).
    #[test]
    fn a_handle_remade_from_what_it_hands_over_is_the_same() {
        let request = http::Request::get("/connect/7")
            .header("cookie", "session=1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut answered = HeaderMap::new();
        answered.insert(header::SEC_WEBSOCKET_PROTOCOL, "chat".parse().unwrap());
        let (handle, _commands) = RelayHandle::new();
        let movable = ProxiedConnection::new(handle.clone(), &request, &answered, no_upstreams());
        let (head, response) = movable.opened_by().unwrap();
        let again = ProxiedConnection::new(handle.clone(), &head, &response, no_upstreams());
        assert_eq!(again.request.0, movable.request.0);
        assert_eq!(again.protocol, movable.protocol);
        assert_eq!(again.live_blocker, None);

        let oversized = http::Request::get("/connect/7")
            .header("cookie", "c".repeat(MAX_KEPT_HEAD))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let blocked = ProxiedConnection::new(handle.clone(), &oversized, &answered, no_upstreams());
        let (head, response) = blocked.opened_by().unwrap();
        let again = ProxiedConnection::new(handle, &head, &response, no_upstreams());
        assert_eq!(again.live_blocker, blocked.live_blocker);
        assert!(again.live_blocker.is_some());
    }
}
