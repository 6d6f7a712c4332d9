//! Who the client is: the socket's peer, or, from a trusted proxy, the address it forwards.

use std::net::IpAddr;

use http::Request;
use ipnet::IpNet;

use crate::server::ClientAddr;

/// The client's address: the nearest address in `X-Forwarded-For` (read from the right)
/// that is not a trusted proxy, when the peer is one; else the peer. `None` without a
/// [`ClientAddr`] (a server that does not set it).
pub(super) fn client_ip<B>(request: &Request<B>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = request.extensions().get::<ClientAddr>()?.0.ip();
    if !is_in(peer, trusted) {
        return Some(peer);
    }
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = peer;
    for hop in forwarded.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // A hop that is not an address: nothing before it can be believed.
            break;
        };
        client = ip;
        if !is_in(ip, trusted) {
            break;
        }
    }
    Some(client)
}

/// What one client is counted as: its IPv4 address (an IPv4-mapped IPv6 address as the IPv4
/// one), or its IPv6 /64, since a host picks any address of its /64 at will and per-address
/// limits would not hold it.
pub(super) fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        IpAddr::V4(_) => ip,
    }
}

/// Whether `ip` (an IPv4-mapped IPv6 address as its IPv4 one) is in one of `networks`.
pub(crate) fn is_in(ip: IpAddr, networks: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    networks.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, forwarded: &[&str]) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(ClientAddr(format!("{peer}:4000").parse().unwrap()));
        for value in forwarded {
            request
                .headers_mut()
                .append("x-forwarded-for", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |peer, fwd: &[&str]| client_ip(&request(peer, fwd), &trusted).unwrap();
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            ip("203.0.113.9", &["1.2.3.4"]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A trusted proxy's rightmost untrusted hop is the client; hops the client added
        // before it are not believed.
        let chain = ["6.6.6.6, 198.51.100.7", "10.0.0.2"];
        assert_eq!(
            ip("10.0.0.1", &chain),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A malformed hop stops the walk at the last address believed.
        let bad = ["198.51.100.7, nonsense"];
        assert_eq!(ip("10.0.0.1", &bad), "10.0.0.1".parse::<IpAddr>().unwrap());
        // No header: the proxy itself.
        assert_eq!(ip("10.0.0.1", &[]), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(client_ip(&Request::new(()), &trusted).is_none());
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_one_its_ipv4() {
        let ip = |text: &str| counted_as(text.parse().unwrap());
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:198.51.100.7"), ip("198.51.100.7"));
    }
}
