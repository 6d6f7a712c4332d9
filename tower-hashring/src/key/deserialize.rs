//! Key sources read from a config file (the `serde` feature):
//! `key = [{ path = "/connect/{userId}" }, { query = "userId" }]`.

use http::HeaderName;
use serde::{de::Error as _, Deserialize, Deserializer};

use super::{HttpKey, KeySource};

/// A key source as written: exactly one of its kinds, named.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Written {
    Path(String),
    Query(String),
    Header(String),
    Cookie(String),
}

/// One table naming one place: `{ path = "/connect/{userId}" }`, `{ query = "userId" }`,
/// `{ header = "x-user" }` or `{ cookie = "uid" }`.
///
/// ```
/// use tower_hashring::KeySource;
///
/// let source: KeySource = serde_json::from_str(r#"{ "header": "x-room" }"#).unwrap();
/// assert_eq!(source, KeySource::Header("x-room".parse().unwrap()));
/// let error = serde_json::from_str::<KeySource>(r#"{ "path": "/connect" }"#).unwrap_err();
/// assert!(error.to_string().contains("placeholder"), "{error}");
/// ```
impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Written::deserialize(deserializer)? {
            Written::Path(pattern) => KeySource::path(&pattern).map_err(D::Error::custom)?,
            Written::Query(name) => KeySource::Query(name),
            Written::Cookie(name) => KeySource::Cookie(name),
            Written::Header(name) => {
                KeySource::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    D::Error::custom(format!("`{name}` is not a valid header name"))
                })?)
            }
        })
    }
}

/// The sources in the order they are tried; at least one.
///
/// ```
/// use tower_hashring::HttpKey;
///
/// let key: HttpKey = serde_json::from_str(r#"[{ "path": "/connect/{userId}" }, { "query": "userId" }]"#).unwrap();
/// assert_eq!(key.sources().len(), 2);
/// assert!(serde_json::from_str::<HttpKey>("[]").is_err());
/// ```
impl<'de> Deserialize<'de> for HttpKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let sources = Vec::<KeySource>::deserialize(deserializer)?;
        if sources.is_empty() {
            return Err(D::Error::custom("give at least one key source"));
        }
        Ok(sources.into_iter().fold(HttpKey::new(), HttpKey::source))
    }
}
