use std::{borrow::Cow, fmt};

use http::{header, HeaderName, Request};
use percent_encoding::percent_decode_str;

use super::{KeyExtractor, RoutingKey};

/// One place in an HTTP request where a key can be found.
///
/// ```
/// use tower_hashring::KeySource;
///
/// let source = KeySource::path("/connect/{userId}").unwrap();
/// assert!(matches!(source, KeySource::Path { .. }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// The path segment at the `{name}` placeholder of a pattern such as `/connect/{userId}`;
    /// the other segments must match exactly. The segment is percent-decoded.
    Path {
        /// The pattern's segments; the placeholder is `None`.
        segments: Vec<Option<String>>,
    },
    /// A query parameter (form-decoded).
    Query(String),
    /// A header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl KeySource {
    /// Parses a path pattern with exactly one `{name}` placeholder segment.
    pub fn path(pattern: &str) -> Result<Self, InvalidKeyPattern> {
        let invalid = |reason| InvalidKeyPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        let rest = pattern
            .strip_prefix('/')
            .ok_or_else(|| invalid("must start with '/'"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<Option<String>> = rest
            .split('/')
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                    None
                } else {
                    Some(s.to_owned())
                }
            })
            .collect();
        match segments.iter().filter(|s| s.is_none()).count() {
            1 => Ok(KeySource::Path { segments }),
            0 => Err(invalid("has no `{name}` placeholder segment")),
            _ => Err(invalid("has more than one `{name}` placeholder segment")),
        }
    }

    fn find<B>(&self, request: &Request<B>) -> Option<RoutingKey> {
        let key: Cow<'_, str> = match self {
            KeySource::Path { segments } => path_key(segments, request.uri().path())?,
            KeySource::Query(name) => form_urlencoded::parse(request.uri().query()?.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)?,
            KeySource::Header(name) => request.headers().get(name)?.to_str().ok()?.into(),
            KeySource::Cookie(name) => cookie_key(request, name)?.into(),
        };
        (!key.is_empty()).then(|| key.into())
    }
}

fn path_key<'a>(segments: &[Option<String>], path: &'a str) -> Option<Cow<'a, str>> {
    let path = path.strip_prefix('/')?;
    // One trailing slash is tolerated: `/connect/42/` is `/connect/42`.
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut parts = path.split('/');
    let mut key = None;
    for expected in segments {
        let part = parts.next()?;
        match expected {
            Some(literal) if literal != part => return None,
            Some(_) => {}
            None => key = Some(percent_decode_str(part).decode_utf8().ok()?),
        }
    }
    parts.next().is_none().then_some(key).flatten()
}

fn cookie_key<'a, B>(request: &'a Request<B>, name: &str) -> Option<&'a str> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A path pattern that cannot locate a key.
///
/// ```
/// use tower_hashring::KeySource;
///
/// let err = KeySource::path("/connect/user").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "key path pattern `/connect/user` has no `{name}` placeholder segment"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidKeyPattern {
    pattern: String,
    reason: &'static str,
}

impl fmt::Display for InvalidKeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key path pattern `{}` {}", self.pattern, self.reason)
    }
}

impl std::error::Error for InvalidKeyPattern {}

/// Takes the key from an `http::Request`, trying each [`KeySource`] in the order added.
/// Empty values count as missing.
///
/// ```
/// use http::{HeaderName, Request};
/// use tower_hashring::{HttpKey, KeyExtractor};
///
/// let key = HttpKey::new()
///     .path("/connect/{userId}")?
///     .query("userId")
///     .header(HeaderName::from_static("x-user-id"))
///     .cookie("uid");
///
/// let ws = Request::get("/connect/42").body(()).unwrap();
/// assert_eq!(key.extract(&ws).unwrap().as_str(), "42");
/// let send = Request::post("/send?userId=a%20b").body(()).unwrap();
/// assert_eq!(key.extract(&send).unwrap().as_str(), "a b");
/// let cookie = Request::get("/").header("cookie", "theme=dark; uid=7").body(()).unwrap();
/// assert_eq!(key.extract(&cookie).unwrap().as_str(), "7");
/// assert!(key.extract(&Request::get("/health").body(()).unwrap()).is_none());
/// # Ok::<(), tower_hashring::InvalidKeyPattern>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpKey {
    sources: Vec<KeySource>,
}

impl HttpKey {
    /// An extractor with no sources (it finds no key until sources are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source.
    pub fn source(mut self, source: KeySource) -> Self {
        self.sources.push(source);
        self
    }

    /// Adds a path pattern source; see [`KeySource::path`].
    pub fn path(self, pattern: &str) -> Result<Self, InvalidKeyPattern> {
        Ok(self.source(KeySource::path(pattern)?))
    }

    /// Adds a query parameter source.
    pub fn query(self, name: impl Into<String>) -> Self {
        self.source(KeySource::Query(name.into()))
    }

    /// Adds a header source.
    pub fn header(self, name: HeaderName) -> Self {
        self.source(KeySource::Header(name))
    }

    /// Adds a cookie source.
    pub fn cookie(self, name: impl Into<String>) -> Self {
        self.source(KeySource::Cookie(name.into()))
    }

    /// The sources, in the order they are tried.
    pub fn sources(&self) -> &[KeySource] {
        &self.sources
    }
}

impl<B> KeyExtractor<Request<B>> for HttpKey {
    fn extract(&self, request: &Request<B>) -> Option<RoutingKey> {
        self.sources.iter().find_map(|s| s.find(request))
    }
}
