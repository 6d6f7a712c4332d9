//! What TLS on a listener is made of, as an application's config states it.

use std::{fmt, path::PathBuf, str::FromStr};

/// TLS on a listener: the default certificate, more certificates chosen by the name the
/// client asks for (SNI), and the oldest protocol version accepted.
///
/// With the `serde` feature it reads from a config file:
///
/// ```toml
/// cert = "/etc/wscluster/default.pem"
/// key = "/etc/wscluster/default.key"
/// min_version = "1.3"            # "1.2" (the default) or "1.3"
/// http2 = true                   # offer h2 by ALPN (the default): WebSockets over HTTP/2 too
///
/// [[sni]]
/// name = "chat.example.com"      # or "*.example.com": one label, as in a certificate
/// cert = "/etc/wscluster/chat.pem"
/// key = "/etc/wscluster/chat.key"
/// ```
///
/// ```
/// use tower_ws_proxy::server::tls::{TlsSettings, TlsVersion};
///
/// let settings = TlsSettings::new("default.pem", "default.key")
///     .sni("chat.example.com", "chat.pem", "chat.key")
///     .min_version(TlsVersion::Tls13);
/// assert_eq!(settings.sni.len(), 1);
/// assert_eq!("1.2".parse::<TlsVersion>().unwrap(), TlsVersion::Tls12);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct TlsSettings {
    /// The PEM certificate chain (leaf first) served when no SNI entry matches, or the
    /// client sent no name.
    pub cert: PathBuf,
    /// The PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The oldest protocol version a client may use. Default: TLS 1.2.
    #[cfg_attr(feature = "serde", serde(default))]
    pub min_version: TlsVersion,
    /// Offer HTTP/2 (ALPN `h2`, before `http/1.1`): browsers then send requests and, with
    /// extended CONNECT (RFC 8441), WebSockets as streams of one connection. Default: on.
    #[cfg_attr(feature = "serde", serde(default = "yes"))]
    pub http2: bool,
    /// Certificates chosen by the server name the client asks for.
    #[cfg_attr(feature = "serde", serde(default))]
    pub sni: Vec<SniCertificate>,
}

impl TlsSettings {
    /// The default certificate from `cert` and `key`, TLS 1.2 and 1.3, no SNI entries.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            min_version: TlsVersion::default(),
            http2: true,
            sni: Vec::new(),
        }
    }

    /// Adds a certificate served to clients that ask for `name`.
    pub fn sni(
        mut self,
        name: impl Into<String>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.sni.push(SniCertificate {
            name: name.into(),
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Offers HTTP/2 by ALPN, or not (`http/1.1` only).
    pub fn http2(mut self, offer: bool) -> Self {
        self.http2 = offer;
        self
    }

    /// Refuses clients older than `version`.
    pub fn min_version(mut self, version: TlsVersion) -> Self {
        self.min_version = version;
        self
    }
}

#[cfg(feature = "serde")]
fn yes() -> bool {
    true
}

/// A certificate served to the clients that ask for `name` (SNI).
///
/// ```
/// use tower_ws_proxy::server::tls::TlsSettings;
///
/// let settings = TlsSettings::new("a.pem", "a.key").sni("*.example.com", "b.pem", "b.key");
/// assert_eq!(settings.sni[0].name, "*.example.com");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct SniCertificate {
    /// A DNS name, compared without regard to case; `*.` first matches one label.
    pub name: String,
    /// The PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// The PEM private key of `cert`.
    pub key: PathBuf,
}

/// A TLS protocol version, as the oldest one accepted. Reads from `"1.2"` and `"1.3"`.
///
/// ```
/// use tower_ws_proxy::server::tls::TlsVersion;
///
/// assert_eq!(TlsVersion::default(), TlsVersion::Tls12);
/// assert_eq!("1.3".parse::<TlsVersion>().unwrap().to_string(), "1.3");
/// assert!("1.1".parse::<TlsVersion>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    #[cfg_attr(feature = "serde", serde(rename = "1.2"))]
    Tls12,
    /// TLS 1.3 only.
    #[cfg_attr(feature = "serde", serde(rename = "1.3"))]
    Tls13,
}

impl FromStr for TlsVersion {
    type Err = UnknownTlsVersion;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "1.2" => Ok(Self::Tls12),
            "1.3" => Ok(Self::Tls13),
            other => Err(UnknownTlsVersion(other.to_owned())),
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        })
    }
}

/// A TLS version other than `1.2` or `1.3`.
///
/// ```
/// use tower_ws_proxy::server::tls::TlsVersion;
///
/// let error = "1.0".parse::<TlsVersion>().unwrap_err();
/// assert!(error.to_string().contains("1.0"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownTlsVersion(String);

impl fmt::Display for UnknownTlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown TLS version {:?}: expected \"1.2\" or \"1.3\"",
            self.0
        )
    }
}

impl std::error::Error for UnknownTlsVersion {}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use serde::{
        de::{value::MapDeserializer, value::StrDeserializer, IntoDeserializer},
        Deserialize,
    };

    use super::{TlsSettings, TlsVersion};

    type Error = serde::de::value::Error;

    #[test]
    fn versions_read_as_numbers_and_settings_by_their_file_names() {
        let version = |text| TlsVersion::deserialize::<StrDeserializer<'_, Error>>(text);
        assert_eq!(
            version("1.3".into_deserializer()).unwrap(),
            TlsVersion::Tls13
        );
        assert!(version("TLS1.3".into_deserializer()).is_err());

        let fields = [("cert", "c.pem"), ("key", "c.key"), ("min_version", "1.3")];
        let settings =
            TlsSettings::deserialize(MapDeserializer::<_, Error>::new(fields.into_iter())).unwrap();
        assert_eq!(
            settings,
            TlsSettings::new("c.pem", "c.key").min_version(TlsVersion::Tls13)
        );
        let unknown = [("cert", "c.pem"), ("key", "c.key"), ("certificate", "x")];
        assert!(
            TlsSettings::deserialize(MapDeserializer::<_, Error>::new(unknown.into_iter()))
                .is_err()
        );
    }
}
