//! The PROXY protocol (HAProxy's, v1 and v2): the address of the client a layer-4 balancer
//! connected for, sent by the balancer before the client's first byte.
//!
//! Written here rather than taken from `ppp`, which needs thiserror 1 while the tree is on 2
//! (one version of each crate). It reads exactly the header, never a byte of the client's
//! data, so the socket goes on to hyper, and to the relay, as it is: v2 is length-prefixed,
//! v1 is read up to its CRLF (at most 107 bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;
/// "PROXY UNKNOWN\r\n", the shortest header of either version.
const SHORTEST: usize = 15;

/// Why a PROXY header could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProxyHeaderError {
    /// The connection ended or failed before the header did.
    Io(std::io::ErrorKind),
    /// Not a PROXY header, or a malformed one.
    Malformed(&'static str),
}

impl std::fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(kind) => write!(f, "reading the PROXY header: {kind}"),
            Self::Malformed(why) => write!(f, "malformed PROXY header: {why}"),
        }
    }
}

impl From<std::io::Error> for ProxyHeaderError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error.kind())
    }
}

/// Reads a PROXY header from `stream`: `Some(client)` for a proxied TCP connection, `None`
/// for a connection the balancer made on its own behalf (v1 `UNKNOWN`, v2 `LOCAL`, or an
/// address family other than TCP over IPv4 or IPv6): its peer is then the client.
pub(crate) async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; SHORTEST];
    stream.read_exact(&mut start).await?;
    if start[..12] == V2_SIGNATURE {
        return read_v2(stream, start).await;
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Malformed("no PROXY signature"));
    }
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed(
                "a v1 line longer than 107 bytes",
            ));
        }
        line.push(stream.read_u8().await?);
    }
    parse_v1(&line[..line.len() - 2])
}

async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
    start: [u8; SHORTEST],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut rest_of_fixed = [0u8; 16 - SHORTEST];
    stream.read_exact(&mut rest_of_fixed).await?;
    let (version_command, family) = (start[12], start[13]);
    let length = u16::from_be_bytes([start[14], rest_of_fixed[0]]) as usize;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("not version 2"));
    }
    match version_command & 0x0f {
        0 => return Ok(None), // LOCAL: the balancer's own connection (a health check).
        1 => {}
        _ => return Err(ProxyHeaderError::Malformed("an unknown v2 command")),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family {
        // TCP over IPv4: source and destination addresses, then their ports.
        0x11 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        0x21 if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            Ok(Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                port(32),
            )))
        }
        0x11 | 0x21 => Err(ProxyHeaderError::Malformed(
            "addresses shorter than their family",
        )),
        // UNSPEC, UDP and Unix sockets name no TCP client.
        _ => Ok(None),
    }
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed("not ASCII"))?;
    let mut fields = line.split(' ').skip(1);
    let malformed = ProxyHeaderError::Malformed;
    match fields.next() {
        Some("UNKNOWN") => return Ok(None),
        Some("TCP4" | "TCP6") => {}
        _ => return Err(malformed("a v1 protocol other than TCP4, TCP6 or UNKNOWN")),
    }
    let source: IpAddr = fields
        .next()
        .and_then(|ip| ip.parse().ok())
        .ok_or(malformed("a v1 source address"))?;
    let _destination = fields.next().ok_or(malformed("a v1 destination address"))?;
    let port: u16 = fields
        .next()
        .and_then(|port| port.parse().ok())
        .ok_or(malformed("a v1 source port"))?;
    Ok(Some(SocketAddr::new(source, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut stream = bytes;
        let header = read_proxy_header(&mut stream).await;
        (header, stream.to_vec())
    }

    #[tokio::test]
    async fn v1_gives_the_client_and_leaves_its_data_unread() {
        let (client, rest) =
            read(b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 7000\r\nGET / HTTP/1.1").await;
        assert_eq!(client, Ok(Some("198.51.100.7:51234".parse().unwrap())));
        assert_eq!(rest, b"GET / HTTP/1.1");
        let (v6, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 7000\r\n").await;
        assert_eq!(v6, Ok(Some("[2001:db8::1]:4000".parse().unwrap())));
        assert_eq!(
            read(b"PROXY UNKNOWN\r\nrest").await,
            (Ok(None), b"rest".to_vec())
        );
    }

    #[tokio::test]
    async fn v2_gives_the_client_and_skips_its_tlvs() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 12 + 5]);
        header.extend_from_slice(&[203, 0, 113, 9, 10, 0, 0, 1]);
        header.extend_from_slice(&[0xc8, 0x32, 0x1b, 0x58]); // ports 51250 and 7000
        header.extend_from_slice(&[0x04, 0, 2, 0xab, 0xcd]); // a TLV (NOOP)
        header.extend_from_slice(b"\x16\x03\x01"); // the client's first bytes
        let (client, rest) = read(&header).await;
        assert_eq!(client, Ok(Some("203.0.113.9:51250".parse().unwrap())));
        assert_eq!(rest, b"\x16\x03\x01");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).await.0, Ok(None));
    }

    #[tokio::test]
    async fn what_is_not_a_header_is_refused_within_its_bounds() {
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            read(&endless).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            read(b"PROXY TCP4 1.2.3.4").await.0,
            Err(ProxyHeaderError::Io(_))
        ));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(
            read(&short).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
    }
}
