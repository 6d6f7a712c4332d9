//! How the gateway's own settings read their values: durations as `"5s"`, secrets inline or
//! from a file, URLs checked for their scheme, and sections that can be switched off.

use std::{fmt, marker::PhantomData, path::PathBuf, time::Duration};

use serde::{
    de::{value::MapAccessDeserializer, Error as _, MapAccess, Visitor},
    Deserialize, Deserializer,
};

use crate::admin_access::AdminToken;
use tower_ws_migrate::MigrationSecret;

/// A deadline that must not be zero.
pub(super) fn positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let duration: Duration = humantime_serde::deserialize(deserializer)?;
    if duration.is_zero() {
        return Err(D::Error::custom("must be longer than 0s"));
    }
    Ok(duration)
}

pub(super) fn some_positive<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    positive(deserializer).map(Some)
}

/// A count of at least 1.
pub(super) fn at_least_one<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialEq + From<u8>,
{
    let count = T::deserialize(deserializer)?;
    if count == T::from(0) {
        return Err(D::Error::custom("must be at least 1"));
    }
    Ok(count)
}

pub(super) fn some_at_least_one<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    at_least_one(deserializer).map(Some)
}

/// A secret written inline (`"…"`) or kept in a file (`{ file = "/run/secrets/…" }`, so it
/// stays out of the config file and its history).
fn secret_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct InFile {
        file: PathBuf,
    }
    struct SecretVisitor;
    impl<'de> Visitor<'de> for SecretVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, or { file = \"/path\" }")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
            Ok(text.to_owned())
        }
        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<String, M::Error> {
            let InFile { file } = InFile::deserialize(MapAccessDeserializer::new(map))?;
            std::fs::read_to_string(&file)
                .map_err(|e| M::Error::custom(format!("cannot read {}: {e}", file.display())))
        }
    }
    deserializer.deserialize_any(SecretVisitor)
}

pub(crate) fn admin_token<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<AdminToken>, D::Error> {
    let text = secret_text(deserializer)?;
    AdminToken::new(&text).map(Some).map_err(D::Error::custom)
}

pub(super) fn migration_secret<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<MigrationSecret>, D::Error> {
    let text = secret_text(deserializer)?;
    MigrationSecret::from_text(&text)
        .map(Some)
        .map_err(D::Error::custom)
}

fn url_with_scheme<'de, D: Deserializer<'de>>(
    deserializer: D,
    schemes: [&str; 2],
) -> Result<String, D::Error> {
    let url = String::deserialize(deserializer)?;
    if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(D::Error::custom(format!(
            "`{url}` is not a {} URL",
            schemes[0]
        )));
    }
    Ok(url)
}

pub(super) fn redis_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    url_with_scheme(deserializer, ["redis://", "rediss://"])
}

pub(super) fn amqp_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    url_with_scheme(deserializer, ["amqp://", "amqps://"])
}

/// A path prefix, which a request path must start with to match.
pub(super) fn path_prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(deserializer)?;
    if !prefix.starts_with('/') {
        return Err(D::Error::custom(format!("`{prefix}` must start with /")));
    }
    Ok(prefix)
}

/// A section that is on by default: its table, or `false` to switch it off.
pub(super) fn table_or_false<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OrFalse<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for OrFalse<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table, or false to switch it off")
        }
        fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Option<T>, E> {
            if on {
                return Err(E::custom("give a table, or false to switch it off"));
            }
            Ok(None)
        }
        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Option<T>, M::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }
    }
    deserializer.deserialize_any(OrFalse(PhantomData))
}
