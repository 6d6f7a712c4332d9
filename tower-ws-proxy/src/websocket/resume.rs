//! Taking a parked WebSocket back in: registered among the live connections like one the
//! proxy just established, and relayed again on its own task.

use std::fmt;

use super::relay_task::{RelayTask, SharedConfig, Stage};
use crate::{
    record::{OpenedVia, Recorder},
    relay::relay_sharing_config,
    ConnectionHandle, LiveConnections, MakeHandle, OpenedConnection, ParkedConnection, Peer,
    Refusal, RelayHandle,
};
use http::HeaderMap;
use tokio::{net::TcpStream, time::Instant};
use tower_hashring::RoutingKey;

/// Resumes [`ParkedConnection`]s (from this process, or handed over by the one before it)
/// with the relay settings, live connections and metrics of a [`WebSocketLayer`](crate::WebSocketLayer).
///
/// ```
/// use tower_ws_proxy::{LiveConnections, RelayConfig, RelayHandle, WebSocketLayer};
///
/// let layer: WebSocketLayer<RelayHandle> =
///     WebSocketLayer::new(LiveConnections::new(100), RelayConfig::default());
/// let resumer = layer.resumer();
/// # let _ = resumer;
/// ```
pub struct Resumer<H = RelayHandle> {
    pub(super) connections: LiveConnections<H>,
    pub(super) relay: SharedConfig,
    pub(super) metrics: Recorder,
}

impl<H> Clone for Resumer<H> {
    fn clone(&self) -> Self {
        Self {
            connections: self.connections.clone(),
            relay: self.relay.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<H> fmt::Debug for Resumer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resumer")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// Why a parked connection was not resumed; it was closed with 1012 (service restart), so
/// its client reconnects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// No place under the connection cap, or shutting down.
    #[error("not resumed: {0}")]
    Refused(Refusal),
    /// Its sockets could not be registered with this runtime.
    #[error("not resumed: {0}")]
    Io(#[from] std::io::Error),
}

impl<H: ConnectionHandle> Resumer<H> {
    /// Registers `parked` (its handle made by `make`, as the request that opened it would
    /// have, or the plain one) and relays it on a task of its own, from where it stopped.
    ///
    /// Its ring version is taken as 0, so a migrator checks it against the current ring
    /// (it may have been routed by another process's ring).
    pub fn resume(
        &self,
        parked: ParkedConnection,
        make: Option<&MakeHandle<H>>,
    ) -> Result<(), ResumeError> {
        let admission = match self.connections.admit() {
            Ok(admission) => admission,
            Err(refusal) => {
                parked.refuse("the gateway is full");
                return Err(ResumeError::Refused(refusal));
            }
        };
        let (relay_handle, commands) = RelayHandle::new();
        let handle = Self::make_handle(&parked, &relay_handle, make);
        let key = &parked.key;
        let registration = self
            .connections
            .register(key, parked.position, parked.backend.clone(), 0, handle)
            .holding(admission);
        self.connections.established(registration.id(), parked.age);
        registration.traffic().add(parked.traffic);
        let commands = commands
            .counting(registration.traffic())
            .idle_for(parked.relay.idle_for);
        self.metrics.opened(&parked.backend, OpenedVia::handover);
        let span = tracing::info_span!(
            "websocket",
            key = %String::from_utf8_lossy(key),
            backend = %parked.backend,
            resumed = true,
        );
        let ParkedConnection { relay: parts, .. } = parked;
        let (client, upstream) = match (
            TcpStream::from_std(parts.client),
            TcpStream::from_std(parts.upstream),
        ) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            // Only when the I/O driver refuses a socket: both are dropped, and the peers
            // see the connection end.
            (Err(error), _) | (_, Err(error)) => return Err(error.into()),
        };
        let task = RelayTask {
            stage: Stage::Raw {
                relay: relay_sharing_config(
                    Peer::with_preread(client, parts.client_preread),
                    Peer::with_preread(upstream.into(), parts.upstream_preread),
                    self.relay.clone(),
                    commands,
                ),
            },
            registration: Some(registration),
            metrics: self.metrics.clone(),
            started: Instant::now(),
        };
        task.spawn(span);
        Ok(())
    }

    /// The handle the connection's request would have made here.
    fn make_handle(
        parked: &ParkedConnection,
        relay_handle: &RelayHandle,
        make: Option<&MakeHandle<H>>,
    ) -> H {
        let fallback_head;
        let request = match &parked.request {
            Some(request) => request,
            None => {
                fallback_head = http::Request::new(()).into_parts().0;
                &fallback_head
            }
        };
        let key = std::str::from_utf8(&parked.key)
            .ok()
            .filter(|k| !k.is_empty())
            .map(RoutingKey::from);
        let empty = HeaderMap::new();
        let opened = OpenedConnection {
            request,
            response_headers: if parked.response_headers.is_empty() {
                &empty
            } else {
                &parked.response_headers
            },
            backend: &parked.backend,
            key: key.as_ref(),
            key_position: parked.position,
            ring_version: 0,
            handle: relay_handle,
        };
        match make {
            Some(make) => make.make(&opened),
            None => H::plain(&opened),
        }
    }
}
