//! Proof that a live move's `x-wscluster-migrated-from` came from a gateway.
//!
//! The gateway strips every `x-wscluster-*` header a client sends, so through the gateway
//! only the gateway can set it. A backend that can also be reached some other way, or
//! that restores state on the strength of the header, checks
//! `x-wscluster-migration-signature`: an HMAC-SHA256 over the key, the old and new owner
//! and a timestamp, with a secret shared by the gateways and the backends.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use http::HeaderName;
use sha2::Sha256;

/// Carries `t=<unix seconds>,sig=<hex HMAC-SHA256>` on a live move (with a secret).
pub const MIGRATION_SIGNATURE: HeaderName =
    HeaderName::from_static("x-wscluster-migration-signature");

/// How old a signature a backend accepts by default: a move's dial takes seconds at most.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

/// A secret shared by gateways and backends, to sign and check live moves.
///
/// ```
/// use std::time::Duration;
/// use tower_ws_migrate::MigrationSecret;
///
/// let secret = MigrationSecret::new("s3cret");
/// let signature = secret.sign(b"user-42", "backend-a", "backend-b", 1_700_000_000);
/// assert!(secret
///     .verify(b"user-42", "backend-a", "backend-b", &signature, 1_700_000_005, Duration::from_secs(60))
///     .is_ok());
/// // Any other key, origin, target or a stale timestamp fails.
/// assert!(secret
///     .verify(b"user-43", "backend-a", "backend-b", &signature, 1_700_000_005, Duration::from_secs(60))
///     .is_err());
/// ```
#[derive(Clone)]
pub struct MigrationSecret(Arc<[u8]>);

/// A secret too short to sign with: it needs 16 characters (32 random bytes is better).
///
/// ```
/// use tower_ws_migrate::MigrationSecret;
///
/// let error = MigrationSecret::from_text("short").unwrap_err();
/// assert_eq!(error.to_string(), "use at least 16 characters (32 random bytes is better)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortSecret;

impl ShortSecret {
    const MIN_LEN: usize = 16;
}

impl fmt::Display for ShortSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "use at least {} characters (32 random bytes is better)",
            Self::MIN_LEN
        )
    }
}

impl std::error::Error for ShortSecret {}

/// Why a migration signature was refused.
///
/// ```
/// use tower_ws_migrate::{BadSignature, MigrationSecret};
///
/// let err = MigrationSecret::new("k").verify(b"u", "a", "b", "nonsense", 0, Default::default());
/// assert_eq!(err, Err(BadSignature::Malformed));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadSignature {
    /// Not `t=<seconds>,sig=<hex>`.
    Malformed,
    /// Older than the accepted age, or from the future beyond it.
    Expired,
    /// The HMAC does not match: another secret, key, origin or target.
    Mismatch,
}

impl fmt::Display for BadSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadSignature::Malformed => "the migration signature is malformed",
            BadSignature::Expired => "the migration signature has expired",
            BadSignature::Mismatch => "the migration signature does not match",
        })
    }
}

impl std::error::Error for BadSignature {}

impl MigrationSecret {
    /// A secret from its bytes (use at least 32 random bytes).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self(secret.as_ref().into())
    }

    /// A secret typed by a person or read from a file: at least 16 characters, without the
    /// surrounding whitespace (a file's newline).
    ///
    /// ```
    /// use tower_ws_migrate::MigrationSecret;
    ///
    /// assert!(MigrationSecret::from_text("0123456789abcdef\n").is_ok());
    /// assert!(MigrationSecret::from_text("short").is_err());
    /// ```
    pub fn from_text(text: &str) -> Result<Self, ShortSecret> {
        let text = text.trim();
        if text.len() < ShortSecret::MIN_LEN {
            return Err(ShortSecret);
        }
        Ok(Self::new(text))
    }

    /// The header value for a move of `key` from `from` to `to` at `unix_seconds`.
    pub fn sign(&self, key: &[u8], from: &str, to: &str, unix_seconds: u64) -> String {
        let mac = self
            .mac(key, from, to, unix_seconds)
            .finalize()
            .into_bytes();
        format!("t={unix_seconds},sig={}", hex::encode(mac))
    }

    /// The header value for a move happening now.
    pub fn sign_now(&self, key: &[u8], from: &str, to: &str) -> String {
        self.sign(key, from, to, unix_now())
    }

    /// Checks `value` for a move of `key` from `from` to `to`, at `now` (unix seconds),
    /// accepting signatures at most `max_age` old (or ahead).
    pub fn verify(
        &self,
        key: &[u8],
        from: &str,
        to: &str,
        value: &str,
        now: u64,
        max_age: Duration,
    ) -> Result<(), BadSignature> {
        let (seconds, signature) = value
            .split_once(',')
            .and_then(|(t, sig)| Some((t.strip_prefix("t=")?, sig.strip_prefix("sig=")?)))
            .ok_or(BadSignature::Malformed)?;
        let seconds: u64 = seconds.parse().map_err(|_| BadSignature::Malformed)?;
        let signature = hex::decode(signature).map_err(|_| BadSignature::Malformed)?;
        if now.abs_diff(seconds) > max_age.as_secs() {
            return Err(BadSignature::Expired);
        }
        // Constant-time comparison.
        self.mac(key, from, to, seconds)
            .verify_slice(&signature)
            .map_err(|_| BadSignature::Mismatch)
    }

    /// Checks `value` against the clock, with [`DEFAULT_MAX_AGE`].
    pub fn verify_now(
        &self,
        key: &[u8],
        from: &str,
        to: &str,
        value: &str,
    ) -> Result<(), BadSignature> {
        self.verify(key, from, to, value, unix_now(), DEFAULT_MAX_AGE)
    }

    fn mac(&self, key: &[u8], from: &str, to: &str, unix_seconds: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        // Length-prefixed fields: no two different moves hash the same bytes.
        for field in [key, from.as_bytes(), to.as_bytes()] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.update(&unix_seconds.to_be_bytes());
        mac
    }
}

impl fmt::Debug for MigrationSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MigrationSecret(..)")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
