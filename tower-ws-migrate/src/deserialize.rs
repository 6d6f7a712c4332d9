//! The migration settings read from a config file (the `serde` feature).

use std::fmt;

use serde::{
    de::{value::MapAccessDeserializer, Error as _, IntoDeserializer, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use tower_ws_proxy::close_code;

use crate::{MigrationPolicy, MigrationSecret, Pacing};

/// `"live"` or `"reconnect"` (closing with 1012 "Service Restart"), or a table that sets the
/// close: `{ mode = "reconnect", close_code = 4000, close_reason = "moved" }`.
///
/// ```
/// use tower_ws_migrate::MigrationPolicy;
///
/// let live: MigrationPolicy = serde_json::from_str(r#""live""#).unwrap();
/// assert_eq!(live, MigrationPolicy::live());
/// let custom: MigrationPolicy =
///     serde_json::from_str(r#"{ "mode": "reconnect", "close_code": 4000 }"#).unwrap();
/// assert_eq!(custom.close(), (4000, "Service Restart"));
/// let error = serde_json::from_str::<MigrationPolicy>(r#"{ "mode": "live", "close_code": 1006 }"#);
/// assert!(error.unwrap_err().to_string().contains("1006"));
/// ```
impl<'de> Deserialize<'de> for MigrationPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PolicyVisitor)
    }
}

/// A name or a table; written by hand because serde's untagged enums lose the inner error.
struct PolicyVisitor;

impl<'de> Visitor<'de> for PolicyVisitor {
    type Value = MigrationPolicy;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"live\", \"reconnect\" or a table with mode, close_code and close_reason")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        let mode = Mode::deserialize(name.into_deserializer())?;
        Ok(mode.policy(close_code::SERVICE_RESTART, "Service Restart"))
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
        let table = Table::deserialize(MapAccessDeserializer::new(map))?;
        table.policy().map_err(M::Error::custom)
    }
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Live,
    Reconnect,
}

impl Mode {
    fn policy(self, code: u16, reason: &str) -> MigrationPolicy {
        let reason = reason.to_owned();
        match self {
            Mode::Live => MigrationPolicy::Live { code, reason },
            Mode::Reconnect => MigrationPolicy::Reconnect { code, reason },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    mode: Mode,
    close_code: Option<u16>,
    close_reason: Option<String>,
}

impl Table {
    fn policy(self) -> Result<MigrationPolicy, String> {
        let code = self.close_code.unwrap_or(close_code::SERVICE_RESTART);
        if !close_code::may_send(code) {
            return Err(format!(
                "close_code: {code} is not a close code a gateway may send"
            ));
        }
        let reason = self.close_reason.as_deref().unwrap_or("Service Restart");
        // A close frame's payload is at most 125 bytes, 2 of them the code.
        if reason.len() > 123 {
            return Err("close_reason: at most 123 bytes fit in a close frame".into());
        }
        Ok(self.mode.policy(code, reason))
    }
}

/// `{ rate = 1000, jitter = 0.2 }`: migrations per second (0: all at once) and the fraction
/// each gap varies by; a field left out keeps the default.
///
/// ```
/// use tower_ws_migrate::Pacing;
///
/// let pacing: Pacing = serde_json::from_str(r#"{ "rate": 100 }"#).unwrap();
/// assert_eq!(pacing, Pacing::per_second(100).jitter(0.2));
/// let unpaced: Pacing = serde_json::from_str(r#"{ "rate": 0 }"#).unwrap();
/// assert_eq!(unpaced.gap(), None);
/// assert!(serde_json::from_str::<Pacing>(r#"{ "jitter": 2.0 }"#).is_err());
/// ```
impl<'de> Deserialize<'de> for Pacing {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Written {
            rate: Option<u32>,
            jitter: Option<f64>,
        }
        let written = Written::deserialize(deserializer)?;
        let jitter = match written.jitter {
            Some(j) if !(0.0..=1.0).contains(&j) => {
                return Err(D::Error::custom(format!(
                    "jitter: {j} is not a fraction from 0 to 1"
                )))
            }
            Some(j) => j,
            None => Pacing::default().jitter,
        };
        Ok(match written.rate {
            None => Pacing::default().jitter(jitter),
            Some(0) => Pacing::unlimited(),
            Some(rate) => Pacing::per_second(rate).jitter(jitter),
        })
    }
}

/// At least 16 characters; surrounding whitespace (a file's newline) is not part of it.
///
/// ```
/// use tower_ws_migrate::MigrationSecret;
///
/// assert!(serde_json::from_str::<MigrationSecret>(r#""0123456789abcdef""#).is_ok());
/// assert!(serde_json::from_str::<MigrationSecret>(r#""short""#).is_err());
/// ```
impl<'de> Deserialize<'de> for MigrationSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let secret = String::deserialize(deserializer)?;
        MigrationSecret::from_text(&secret).map_err(D::Error::custom)
    }
}
