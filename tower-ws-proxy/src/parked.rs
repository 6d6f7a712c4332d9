//! A live WebSocket taken out of this process's relay and registry, with everything another
//! process needs to go on with it: its parked relay (two sockets, the bytes read past the
//! message boundaries, its idle time), its record (key, ring position, backend, age,
//! traffic) and the request head its handle was made from. [`LiveConnections::park`]
//! exports one; [`Resumer::resume`](crate::Resumer::resume) takes it back in, here or in
//! another process after `server::handover` carried it there (its record goes as bytes,
//! its sockets as descriptors).
//!
//! Parked connections are always between messages in both directions, so the frame trackers
//! of the relay that resumes start fresh: that is their position.

use std::{os::fd::OwnedFd, sync::Arc, time::Duration};

use bytes::{Buf, BufMut, Bytes};
use http::{request, HeaderMap, HeaderName, HeaderValue};
use tower_hashring::NodeId;

use crate::{
    close_code, frame::close_frame, ConnectionHandle, ConnectionId, Flow, LiveConnections,
    ParkError, ParkedRelay, TrafficTotals,
};

/// The most bytes one field of an encoded record may hold: a request head, the bytes read
/// ahead, a key. Anything larger is a broken or hostile peer.
const MAX_FIELD: usize = 1 << 20;

/// One live WebSocket, parked and taken out of this process's registry.
///
/// ```
/// use tower_ws_proxy::ParkedConnection;
///
/// fn describe(parked: &ParkedConnection) -> String {
///     format!("{} bytes of key on {}", parked.key.len(), parked.backend)
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct ParkedConnection {
    /// The relay's sockets and bytes read ahead.
    pub relay: ParkedRelay,
    /// The routing key (empty for a keyless request).
    pub key: Arc<[u8]>,
    /// The key's position on the ring.
    pub position: u64,
    /// The backend its upstream socket runs to.
    pub backend: NodeId,
    /// How long ago it was established.
    pub age: Duration,
    /// What it carried so far.
    pub traffic: TrafficTotals,
    /// The head of the request that opened it, if its handle kept one.
    pub request: Option<request::Parts>,
    /// The headers of the backend's 101 that its handle kept (subprotocol, extensions).
    pub response_headers: HeaderMap,
}

impl ParkedConnection {
    /// Ends a connection that cannot be resumed: a 1012 (service restart) close to both
    /// sides, which are between messages, then the sockets are dropped. The client knows to
    /// reconnect.
    pub fn refuse(self, reason: &str) {
        use std::io::Write;
        let to_client = close_frame(close_code::SERVICE_RESTART, reason, false);
        let to_upstream = close_frame(close_code::SERVICE_RESTART, reason, true);
        // Non-blocking and best-effort: a close frame fits any socket buffer with room.
        let _ = (&self.relay.client).write_all(&to_client);
        let _ = (&self.relay.upstream).write_all(&to_upstream);
    }

    /// Appends this record (not its sockets) to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, &self.key);
        out.put_u64(self.position);
        put_bytes(out, self.backend.as_str().as_bytes());
        out.put_u64(self.age.as_millis() as u64);
        out.put_u64(self.relay.idle_for.as_millis() as u64);
        for flow in [self.traffic.to_backend, self.traffic.to_client] {
            out.put_u64(flow.messages);
            out.put_u64(flow.bytes);
        }
        put_bytes(out, &encode_head(self.request.as_ref()));
        put_bytes(out, &encode_headers(&self.response_headers));
        put_bytes(out, &self.relay.client_preread);
        put_bytes(out, &self.relay.upstream_preread);
    }

    /// Reads one record from `input`, with its two sockets (client, then upstream).
    pub(crate) fn decode(
        input: &mut Bytes,
        client: OwnedFd,
        upstream: OwnedFd,
    ) -> Result<Self, DecodeError> {
        let key: Arc<[u8]> = take_bytes(input)?.as_ref().into();
        let position = take_u64(input)?;
        let backend = String::from_utf8(take_bytes(input)?.to_vec())
            .map_err(|_| DecodeError("a backend id is not UTF-8"))?;
        let age = Duration::from_millis(take_u64(input)?);
        let idle_for = Duration::from_millis(take_u64(input)?);
        let mut flows = [Flow::default(); 2];
        for flow in &mut flows {
            flow.messages = take_u64(input)?;
            flow.bytes = take_u64(input)?;
        }
        let request = decode_head(&take_bytes(input)?);
        let response_headers = decode_headers(&take_bytes(input)?);
        let client_preread = take_bytes(input)?;
        let upstream_preread = take_bytes(input)?;
        Ok(Self {
            relay: ParkedRelay {
                client: std::net::TcpStream::from(client),
                upstream: std::net::TcpStream::from(upstream),
                client_preread,
                upstream_preread,
                idle_for,
            },
            key,
            position,
            backend: NodeId::from(backend),
            age,
            traffic: TrafficTotals {
                to_backend: flows[0],
                to_client: flows[1],
            },
            request,
            response_headers,
        })
    }
}

/// A record that does not read as one.
#[derive(Debug, thiserror::Error)]
#[error("a parked connection's record is malformed: {0}")]
pub(crate) struct DecodeError(&'static str);

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn take_u64(input: &mut Bytes) -> Result<u64, DecodeError> {
    input
        .try_get_u64()
        .map_err(|_| DecodeError("the record is cut short"))
}

fn take_bytes(input: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = input
        .try_get_u32()
        .map_err(|_| DecodeError("the record is cut short"))? as usize;
    if len > MAX_FIELD {
        return Err(DecodeError("a field is over 1 MiB"));
    }
    if input.remaining() < len {
        return Err(DecodeError("the record is cut short"));
    }
    Ok(input.split_to(len))
}

/// A head as `path\nname:value\n…` (empty: none).
fn encode_head(head: Option<&request::Parts>) -> Vec<u8> {
    let Some(head) = head else {
        return Vec::new();
    };
    let path = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(path.len() + 1);
    out.extend_from_slice(path.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&encode_headers(&head.headers));
    out
}

fn decode_head(bytes: &[u8]) -> Option<request::Parts> {
    if bytes.is_empty() {
        return None;
    }
    let (path, headers) = match bytes.iter().position(|b| *b == b'\n') {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[][..]),
    };
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.uri = http::Uri::try_from(path).unwrap_or_default();
    head.headers = decode_headers(headers);
    Some(head)
}

fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Lines that are not a valid header are skipped.
fn decode_headers(bytes: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n') {
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
    headers
}

impl<H: ConnectionHandle> LiveConnections<H> {
    /// Parks connection `id`'s relay between messages and takes it out of these live
    /// connections, with what another process needs to resume it
    /// ([`RelayHandle::park`](crate::RelayHandle::park)). On an error the connection stays
    /// here, relaying.
    pub async fn park(&self, id: ConnectionId) -> Result<ParkedConnection, ParkError> {
        let (key, position, backend, started, traffic, handle) = self
            .with_record(id, |t| {
                (
                    t.key.clone(),
                    t.position,
                    t.backend.clone(),
                    t.started,
                    t.traffic.clone(),
                    t.handle.clone(),
                )
            })
            .ok_or(ParkError::Ended)?;
        let opened_by = handle.opened_by();
        let relay = handle.relay().park().await?;
        let (request, response_headers) = match opened_by {
            Some((request, response)) => (Some(request), response),
            None => (None, HeaderMap::new()),
        };
        Ok(ParkedConnection {
            relay,
            key,
            position,
            backend,
            age: started.elapsed(),
            traffic: traffic.totals(),
            request,
            response_headers,
        })
    }

    /// The connections whose relays could be parked now (both sides bare TCP sockets),
    /// oldest first.
    pub fn transferable(&self) -> Vec<ConnectionId> {
        let mut ids = Vec::new();
        self.for_each(|t| {
            if t.handle.relay().is_transferable() {
                ids.push(t.id);
            }
        });
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (connected, listener.accept().unwrap().0)
    }

    #[test]
    fn a_record_reads_back_as_it_was_written() {
        let (client, upstream) = socket_pair();
        let mut head = http::Request::get("/connect/42?room=a%20b")
            .header("x-user", "42")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        head.headers
            .append("x-user", HeaderValue::from_static("again"));
        let mut response_headers = HeaderMap::new();
        response_headers.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        let parked = ParkedConnection {
            relay: ParkedRelay {
                client,
                upstream,
                client_preread: Bytes::from_static(b"\x81\x02hi"),
                upstream_preread: Bytes::new(),
                idle_for: Duration::from_millis(1500),
            },
            key: b"42"[..].into(),
            position: u64::MAX - 3,
            backend: NodeId::from("backend-a"),
            age: Duration::from_secs(90),
            traffic: TrafficTotals {
                to_backend: Flow {
                    messages: 3,
                    bytes: 40,
                },
                to_client: Flow {
                    messages: 5,
                    bytes: 77,
                },
            },
            request: Some(head),
            response_headers,
        };
        let mut bytes = Vec::new();
        parked.encode(&mut bytes);
        let (c, u) = socket_pair();
        let mut input = Bytes::from(bytes);
        let read = ParkedConnection::decode(&mut input, c.into(), u.into()).unwrap();
        assert!(input.is_empty());
        assert_eq!(
            (&*read.key, read.position, &read.backend),
            (&b"42"[..], u64::MAX - 3, &NodeId::from("backend-a"))
        );
        assert_eq!(
            (read.age, read.relay.idle_for),
            (parked.age, parked.relay.idle_for)
        );
        assert_eq!(read.traffic, parked.traffic);
        assert_eq!(read.relay.client_preread, parked.relay.client_preread);
        let request = read.request.unwrap();
        assert_eq!(request.uri, "/connect/42?room=a%20b");
        let users: Vec<_> = request.headers.get_all("x-user").iter().collect();
        assert_eq!(users, ["42", "again"]);
        assert_eq!(read.response_headers["sec-websocket-protocol"], "chat");
    }

    #[test]
    fn a_cut_or_oversized_record_is_refused() {
        let (client, upstream) = socket_pair();
        let mut cut = Bytes::from_static(&[0, 0, 0, 2, b'4']);
        assert!(ParkedConnection::decode(&mut cut, client.into(), upstream.into()).is_err());
        let (client, upstream) = socket_pair();
        let mut huge = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        let error = ParkedConnection::decode(&mut huge, client.into(), upstream.into())
            .unwrap_err()
            .to_string();
        assert!(error.contains("over 1 MiB"), "{error}");
    }
}
