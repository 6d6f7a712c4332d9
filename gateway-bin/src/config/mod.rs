//! The gateway's configuration: one tree, read from a TOML file, whose sections are the
//! libraries' own config types (`[relay]` is [`RelayConfig`], `[http]` is [`HttpLimits`], …)
//! beside the gateway's few of its own. Flags and environment variables override it.
//!
//! Every section and field is optional; durations are written `"5s"` or `"250ms"`; an
//! unknown field, a value out of range or a file that cannot be read is an error naming the
//! field. The README's "Configuration" section shows a file with every field.
//!
//! ```
//! use std::time::Duration;
//! use gateway_bin::config::GatewayConfig;
//!
//! let config = GatewayConfig::parse(r#"
//!     [relay]
//!     idle_timeout = "10m"
//!     [migration]
//!     pacing = { rate = 200 }
//! "#)?;
//! assert_eq!(config.relay.idle_timeout, Some(Duration::from_secs(600)));
//! let error = GatewayConfig::parse("[relay]\nclose_timeout = \"0s\"").unwrap_err();
//! assert!(error.to_string().starts_with("relay.close_timeout: "), "{error}");
//! # Ok::<(), gateway_bin::config::ConfigError>(())
//! ```

mod sections;
pub(crate) mod values;

use std::path::Path;

use serde::Deserialize;
use tower_ws_migrate::MigrationSecret;
use tower_ws_proxy::{
    client_limit::ClientLimits,
    server::{tls::TlsSettings, HttpLimits},
    RelayConfig, UpstreamConfig,
};

use crate::admin_access::{AdminAccess, AdminToken};

pub use self::sections::{
    AmqpSource, ClusterConfig, DiscoveryConfig, DockerConfig, EventsConfig, Listen,
    MigrationConfig, Proxy, RedisSource, RouteMigration, Routing, Shutdown, SwarmConfig,
};

/// Where the admin token can come from besides the file; it wins over the file.
pub const ADMIN_TOKEN_ENV: &str = "WSCLUSTER_ADMIN_TOKEN";
/// Where the migration secret can come from besides the file; it wins over the file.
pub const MIGRATION_SECRET_ENV: &str = "WSCLUSTER_MIGRATION_SECRET";

/// Settings of a gateway: the config file's tree.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[listen]`: the listeners and worker threads.
    #[serde(default = "Listen::from_file")]
    pub listen: Listen,
    /// `[admin]`: the admin API's token and the networks backends may be added from.
    pub admin: AdminAccess,
    /// `[routing]`: where requests carry their key.
    pub routing: Routing,
    /// `[http]`: what a public connection may cost before a request reaches the stack.
    /// Its cap, unset, is sized to the descriptor limit by the binary (10,000 otherwise);
    /// its stop grace is `[shutdown] grace`.
    pub http: HttpLimits,
    /// `[proxy]`: the WebSocket cap and the HTTP requests' deadline.
    pub proxy: Proxy,
    /// `[tls]`: serve the public listener over TLS (`wss://`); default: plaintext.
    pub tls: Option<TlsSettings>,
    /// `[client_limits]`: what one client IP may open (default: no limits).
    pub client_limits: ClientLimits,
    /// `[relay]`: a WebSocket's deadlines and frame limits.
    pub relay: RelayConfig,
    /// `[upstream]`: deadlines toward a backend.
    pub upstream: UpstreamConfig,
    /// `[shutdown]`: how long connections get on SIGTERM.
    pub shutdown: Shutdown,
    /// `[migration]`: how WebSockets whose owner changed are moved.
    pub migration: MigrationConfig,
    /// `[discovery]`: where members come from besides the configured list and the admin API.
    pub discovery: DiscoveryConfig,
    /// `[cluster]`: the other replicas of this gateway, to show whether they agree.
    pub cluster: Option<ClusterConfig>,
    /// `[events]`: where ring changes and migrations are published.
    pub events: Option<EventsConfig>,
    /// `[[backends]]`: backends that are always members (`id`, `address`, `weight`).
    pub backends: Vec<discovery::Backend>,
}

/// A configuration that cannot be used; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl GatewayConfig {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Parses TOML text; an error starts with the path of the field at fault.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let document = toml::Deserializer::parse(text).map_err(|e| ConfigError(e.to_string()))?;
        serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            let error = e.into_inner();
            let mut message = format!("{path}: {}", error.message());
            if let Some(span) = error.span() {
                let line = text[..span.start].lines().count().max(1);
                message.push_str(&format!(" (line {line})"));
            }
            if let Some(hint) = moved_section(&path) {
                message.push_str(&format!("; {hint}"));
            }
            ConfigError(message)
        })
    }

    /// The admin token and migration secret from `env` (the process environment, say)
    /// where it has them: they win over the file's.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if let Some(token) = env(ADMIN_TOKEN_ENV) {
            let token = AdminToken::new(&token)
                .map_err(|e| ConfigError(format!("{ADMIN_TOKEN_ENV}: {e}")))?;
            self.admin.token = Some(token);
        }
        if let Some(secret) = env(MIGRATION_SECRET_ENV) {
            let secret = MigrationSecret::from_text(&secret)
                .map_err(|e| ConfigError(format!("{MIGRATION_SECRET_ENV}: {e}")))?;
            self.migration.secret = Some(secret);
        }
        Ok(self)
    }
}

/// Where a section of the older layout went (files written for it name them).
fn moved_section(path: &str) -> Option<&'static str> {
    Some(match path.split('.').next()? {
        "limits" => "the [limits] fields moved to [http], [proxy] and [relay.limits]",
        "timeouts" => "the [timeouts] fields moved to [http], [proxy], [relay], [upstream], [shutdown] and [migration]",
        "health" => "[health] is now [discovery.health]",
        "docker" => "[docker] is now [discovery.docker]",
        "swarm" => "[swarm] is now [discovery.swarm]",
        _ => return None,
    })
}
