//! The load, migration, conformance and hostile-client tools of wscluster (`wsload`,
//! `wsmigrate`, `wsecho`, `wshostile`, `wsaxum`), and what they share: they only ever
//! target loopback.

use std::net::{IpAddr, ToSocketAddrs};

pub mod tls;

/// Checks that `url` (`ws://`, `wss://`, `http://` or `https://`) names a loopback address;
/// the error says why not.
///
/// ```
/// use wscluster_tools::check_loopback;
///
/// assert!(check_loopback("ws://127.0.0.1:7000/connect/{user}").is_ok());
/// assert!(check_loopback("http://[::1]:7001").is_ok());
/// assert!(check_loopback("wss://localhost:7443/connect/{user}").is_ok());
/// assert!(check_loopback("ws://192.0.2.1:7000/").is_err());
/// ```
pub fn check_loopback(url: &str) -> Result<(), String> {
    let rest = ["ws://", "wss://", "http://", "https://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| format!("only ws(s):// and http(s):// URLs are supported, got `{url}`"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let addrs = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{authority}`: {e}"))?;
    for addr in addrs {
        let loopback = match addr.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => ip.is_loopback(),
        };
        if !loopback {
            return Err(format!(
                "`{authority}` is not a loopback address; the load tools only load loopback"
            ));
        }
    }
    Ok(())
}

/// The `p`th percentile of sorted microseconds, in milliseconds (NaN when empty).
///
/// ```
/// use wscluster_tools::percentile_ms;
///
/// assert_eq!(percentile_ms(&[1000, 2000, 3000], 50.0), 2.0);
/// ```
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[rank] as f64 / 1000.0
}
