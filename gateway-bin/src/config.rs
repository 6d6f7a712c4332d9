//! The gateway's configuration file (TOML). Flags and environment variables override it.
//!
//! ```toml
//! [listen]
//! public = "127.0.0.1:7000"
//! admin = "127.0.0.1:7001"
//! metrics = "127.0.0.1:9100"    # GET /metrics alone, without the admin token (default: only on admin)
//! workers = 2                   # threads serving the public listener (default: one per core); 0: the main runtime
//!
//! [admin]                      # the admin API (on listen.admin)
//! token_file = "/run/secrets/wscluster-admin"   # or token = "…", or env WSCLUSTER_ADMIN_TOKEN:
//!                               # every admin route needs `Authorization: Bearer <token>`;
//!                               # required unless listen.admin is on loopback
//! backend_networks = ["10.0.0.0/8"]   # backends added through the API must be in one (default: any)
//!
//! [routing]
//! # Tried in order; each entry is one of path, query, header, cookie.
//! key = [{ path = "/connect/{userId}" }, { query = "userId" }]
//! missing_key = "reject"        # or "round-robin", "random"
//! load_factor = 1.25            # bounded loads over live WebSockets (default: off)
//!
//! [limits]
//! max_connections = 100000      # WebSockets at once (503 past it); default: from the descriptor limit
//! max_http_connections = 10000  # public connections before an upgrade; past it closed at once
//! max_head_bytes = 16384        # request head (431 past it; at least 8192)
//! max_headers = 64              # request headers (431 past it)
//! max_frame_bytes = 16777216    # a WebSocket frame (1009 past it; 0: no limit)
//! max_message_bytes = 67108864  # a WebSocket message (1009 past it; 0: no limit)
//!
//! [timeouts]                    # milliseconds
//! head_ms = 10000               # the request head; also bounds the keep-alive idle wait
//! request_ms = 30000            # HTTP response head (408 past it)
//! connect_ms = 2000             # TCP connect to a backend
//! handshake_ms = 5000           # a backend's answer to the WebSocket handshake
//! switch_ms = 2000              # a live move waits this long for the client's message boundary
//! close_ms = 5000               # close handshake; and ending a connection after a framing error
//! half_close_ms = 1000          # the other side, once one side's connection ended
//! idle_ms = 0                   # WebSocket idle (1001 past it); 0: none
//! tcp_keepalive_ms = 30000      # TCP keepalive probes on both sockets; 0: off
//! migration_ms = 14000          # one migration's deadline (default: connect+handshake+switch+close)
//! shutdown_window_ms = 5000     # WebSockets close with 1001 spread over this window
//! shutdown_grace_ms = 5000      # then what is still open gets this long
//!
//! [migration]                  # WebSockets whose owner changed on the ring
//! policy = "live"               # or "reconnect": close with close_code and reconnect
//! close_code = 1012             # the close a client gets when it has to reconnect
//! close_reason = "Service Restart"
//! rate = 1000                   # migrations per second; 0: all at once
//! jitter = 0.2                  # each gap varies by up to ± this fraction
//! drain_ms = 5000               # a removed backend's connections move over this window
//! routes = [{ prefix = "/game/", policy = "reconnect" }]   # first matching prefix wins
//! secret_file = "/run/secrets/wscluster-migration"  # or secret = "…", or env WSCLUSTER_MIGRATION_SECRET:
//!                               # live moves carry an HMAC the backends check
//!
//! [discovery]                  # backends that register themselves in Redis (wsbackend --redis)
//! redis = "redis://127.0.0.1:6379"
//! service = "wscluster"
//! resync_ms = 1000              # re-read the whole set this often, announcements or not
//! amqp = "amqp://guest:guest@127.0.0.1:5672/%2f"   # and/or: backends announce on RabbitMQ
//! amqp_exchange = "wscluster.members"                # (wsbackend --amqp)
//! flap_limit = 4                # a member that left this often (0: off) within
//! flap_window_ms = 60000        #   this window is held out when it returns,
//! hold_down_ms = 30000          #   until this long after its latest departure
//!
//! [events]                      # every ring change and migration, as JSON, to RabbitMQ
//! amqp = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! exchange = "wscluster.events"  # a durable fanout exchange
//!
//! [docker]                      # backends as containers labelled wscluster.service=<service>
//! service = "wscluster"
//! network = "wscluster"         # reach them on this network (default: their first)
//! image = "wscluster-backend"   # lets POST/DELETE /admin/backends start and stop containers
//! cap = 16                      # the most containers the admin API may run
//! memory_mb = 256               # each container's memory limit
//! cpus = 1.0                    # each container's CPU limit
//! pids = 256                    # each container's process and thread limit
//!
//! [swarm]                       # backends as the tasks of Swarm services labelled
//! service = "wscluster"         #   wscluster.service=<service>, one member per replica slot
//! network = "wscluster_backends"  # reach tasks on this overlay (default: their first)
//! scale = true                  # POST/DELETE /admin/backends scale the one labelled service
//! cap = 16                      # the most replicas the admin API may run
//!
//! [health]                      # active checks; a backend is on the ring only while they pass
//! check = "http"                # or "tcp"
//! path = "/health"
//! interval_ms = 1000
//! timeout_ms = 1000
//! up = 2                        # consecutive successes to join
//! down = 2                      # consecutive failures to leave
//!
//! [[backends]]
//! id = "backend-a"
//! address = "127.0.0.1:7100"
//! ```

use std::{fmt, net::SocketAddr, path::Path, time::Duration};

use http::HeaderName;
use serde::Deserialize;
use tower_hashring::{HttpKey, KeySource, LoadFactor, MissingKeyPolicy, NodeId};
use tower_ws_proxy::{frame::FrameLimits, RelayConfig, UpstreamConfig};

use tower_ws_migrate::{MigrationPolicy, MigrationSecret, Pacing};

use discovery::{ContainerLimits, FlapDamping, HealthCheck};

use ipnet::IpNet;

use crate::admin_access::{AdminAccess, AdminToken};
use crate::gateway::{
    DiscoveryConfig, DockerConfig, EventsConfig, GatewayConfig, MigrationConfig, RedisSource,
    SwarmConfig,
};

/// The file's contents; every section and field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    listen: Listen,
    #[serde(default)]
    admin: AdminSection,
    #[serde(default)]
    routing: Routing,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    migration: MigrationSection,
    #[serde(default)]
    discovery: Discovery,
    #[serde(default)]
    health: Option<Health>,
    #[serde(default)]
    events: Option<Events>,
    #[serde(default)]
    docker: Option<DockerSection>,
    #[serde(default)]
    swarm: Option<SwarmSection>,
    #[serde(default)]
    backends: Vec<BackendEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwarmSection {
    service: Option<String>,
    network: Option<String>,
    scale: Option<bool>,
    cap: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationSection {
    policy: Option<PolicyName>,
    close_code: Option<u16>,
    close_reason: Option<String>,
    rate: Option<u32>,
    jitter: Option<f64>,
    drain_ms: Option<u64>,
    #[serde(default)]
    routes: Vec<MigrationRoute>,
    secret: Option<String>,
    secret_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    token: Option<String>,
    token_file: Option<std::path::PathBuf>,
    #[serde(default)]
    backend_networks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Discovery {
    redis: Option<String>,
    service: Option<String>,
    resync_ms: Option<u64>,
    amqp: Option<String>,
    amqp_exchange: Option<String>,
    flap_limit: Option<u32>,
    flap_window_ms: Option<u64>,
    hold_down_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerSection {
    service: Option<String>,
    network: Option<String>,
    image: Option<String>,
    cap: Option<usize>,
    memory_mb: Option<u64>,
    cpus: Option<f64>,
    pids: Option<u32>,
}

impl DockerSection {
    fn limits(&self) -> Result<ContainerLimits, ConfigError> {
        let defaults = ContainerLimits::default();
        let memory_bytes = match self.memory_mb {
            None => defaults.memory_bytes,
            // Docker refuses less than 6 MiB.
            Some(mb @ 6..=1_048_576) => mb << 20,
            Some(mb) => {
                return Err(ConfigError(format!(
                    "docker.memory_mb: {mb} is outside 6..=1048576"
                )))
            }
        };
        let cpus = match self.cpus {
            None => defaults.cpus,
            Some(cpus) if cpus.is_finite() && (0.01..=1024.0).contains(&cpus) => cpus,
            Some(cpus) => {
                return Err(ConfigError(format!(
                    "docker.cpus: {cpus} is outside 0.01..=1024"
                )))
            }
        };
        let pids = match self.pids {
            None => defaults.pids,
            Some(0) => return Err(ConfigError("docker.pids: must be at least 1".into())),
            Some(pids) => pids,
        };
        Ok(ContainerLimits {
            memory_bytes,
            cpus,
            pids,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Events {
    amqp: String,
    exchange: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Health {
    check: CheckKind,
    path: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    up: Option<u32>,
    down: Option<u32>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CheckKind {
    Http,
    Tcp,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PolicyName {
    Live,
    Reconnect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationRoute {
    prefix: String,
    policy: PolicyName,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listen {
    public: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    workers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Routing {
    key: Option<Vec<KeyRule>>,
    missing_key: Option<MissingKey>,
    load_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum KeyRule {
    Path(String),
    Query(String),
    Header(String),
    Cookie(String),
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MissingKey {
    Reject,
    RoundRobin,
    Random,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_connections: Option<usize>,
    max_http_connections: Option<usize>,
    max_head_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_frame_bytes: Option<u64>,
    max_message_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Timeouts {
    head_ms: Option<u64>,
    connect_ms: Option<u64>,
    handshake_ms: Option<u64>,
    switch_ms: Option<u64>,
    idle_ms: Option<u64>,
    close_ms: Option<u64>,
    half_close_ms: Option<u64>,
    tcp_keepalive_ms: Option<u64>,
    migration_ms: Option<u64>,
    shutdown_window_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    request_ms: Option<u64>,
}

/// A static backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendEntry {
    id: String,
    address: SocketAddr,
}

/// A configuration that cannot be used; the message names the file and field.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigFile {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }

    /// Whether the file sets the WebSocket and the HTTP connection caps (otherwise they are
    /// derived from the descriptor limit).
    pub fn sets_caps(&self) -> (bool, bool) {
        (
            self.limits.max_connections.is_some(),
            self.limits.max_http_connections.is_some(),
        )
    }

    /// The static backends.
    pub fn backends(&self) -> Vec<(NodeId, SocketAddr)> {
        self.backends
            .iter()
            .map(|b| (NodeId::from(b.id.as_str()), b.address))
            .collect()
    }

    /// The gateway settings: this file over the defaults.
    pub fn gateway_config(&self) -> Result<GatewayConfig, ConfigError> {
        let defaults = GatewayConfig::default();
        let ms = Duration::from_millis;
        let t = &self.timeouts;
        let key = match &self.routing.key {
            None => defaults.key,
            Some(rules) if rules.is_empty() => {
                return Err(ConfigError(
                    "routing.key: give at least one key rule".into(),
                ))
            }
            Some(rules) => {
                rules
                    .iter()
                    .enumerate()
                    .try_fold(HttpKey::new(), |key, (i, rule)| {
                        let source = match rule {
                            KeyRule::Path(pattern) => KeySource::path(pattern)
                                .map_err(|e| ConfigError(format!("routing.key[{i}].path: {e}")))?,
                            KeyRule::Query(name) => KeySource::Query(name.clone()),
                            KeyRule::Cookie(name) => KeySource::Cookie(name.clone()),
                            KeyRule::Header(name) => KeySource::Header(
                                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                                    ConfigError(format!(
                                    "routing.key[{i}].header: `{name}` is not a valid header name"
                                ))
                                })?,
                            ),
                        };
                        Ok(key.source(source))
                    })?
            }
        };
        Ok(GatewayConfig {
            public: self.listen.public.unwrap_or(defaults.public),
            admin: self.listen.admin.unwrap_or(defaults.admin),
            metrics: self.listen.metrics,
            admin_access: self
                .admin
                .access(std::env::var("WSCLUSTER_ADMIN_TOKEN").ok())?,
            key,
            missing_key: match self.routing.missing_key {
                None => defaults.missing_key,
                Some(MissingKey::Reject) => MissingKeyPolicy::Reject,
                Some(MissingKey::RoundRobin) => MissingKeyPolicy::RoundRobin,
                Some(MissingKey::Random) => MissingKeyPolicy::Random,
            },
            load_factor: self
                .routing
                .load_factor
                .map(LoadFactor::new)
                .transpose()
                .map_err(|e| ConfigError(format!("routing.load_factor: {e}")))?,
            max_connections: match self.limits.max_connections {
                Some(0) => {
                    return Err(ConfigError(
                        "limits.max_connections: must be at least 1".into(),
                    ))
                }
                other => other.unwrap_or(defaults.max_connections),
            },
            upstream: {
                let mut upstream = UpstreamConfig::default();
                upstream.connect_timeout = t.connect_ms.map_or(upstream.connect_timeout, ms);
                upstream.handshake_timeout = t.handshake_ms.map_or(upstream.handshake_timeout, ms);
                upstream
            },
            relay: RelayConfig::default()
                .idle_timeout(t.idle_ms.filter(|&v| v > 0).map(ms))
                .close_timeout(
                    positive_ms(t.close_ms, "close_ms")?.unwrap_or(defaults.relay.close_timeout),
                )
                .half_close_timeout(
                    positive_ms(t.half_close_ms, "half_close_ms")?
                        .unwrap_or(defaults.relay.half_close_timeout),
                )
                .switch_timeout(
                    positive_ms(t.switch_ms, "switch_ms")?.unwrap_or(defaults.relay.switch_timeout),
                )
                .tcp_keepalive(match t.tcp_keepalive_ms {
                    None => defaults.relay.tcp_keepalive,
                    Some(0) => None,
                    Some(v) => Some(ms(v)),
                })
                .limits(FrameLimits {
                    max_frame: byte_limit(
                        self.limits.max_frame_bytes,
                        defaults.relay.limits.max_frame,
                    ),
                    max_message: byte_limit(
                        self.limits.max_message_bytes,
                        defaults.relay.limits.max_message,
                    ),
                }),
            shutdown_window: t.shutdown_window_ms.map_or(defaults.shutdown_window, ms),
            shutdown_grace: t.shutdown_grace_ms.map_or(defaults.shutdown_grace, ms),
            request_timeout: t.request_ms.map_or(defaults.request_timeout, ms),
            head_timeout: positive_ms(t.head_ms, "head_ms")?.unwrap_or(defaults.head_timeout),
            max_head_bytes: match self.limits.max_head_bytes {
                Some(bytes) if bytes < 8192 => {
                    return Err(ConfigError(format!(
                        "limits.max_head_bytes: {bytes} is below hyper's minimum of 8192"
                    )))
                }
                other => other.unwrap_or(defaults.max_head_bytes),
            },
            max_headers: match self.limits.max_headers {
                Some(0) => {
                    return Err(ConfigError("limits.max_headers: must be at least 1".into()))
                }
                other => other.unwrap_or(defaults.max_headers),
            },
            max_http_connections: match self.limits.max_http_connections {
                Some(0) => {
                    return Err(ConfigError(
                        "limits.max_http_connections: must be at least 1".into(),
                    ))
                }
                other => other.unwrap_or(defaults.max_http_connections),
            },
            workers: self.listen.workers.unwrap_or_else(default_workers),
            migration: {
                let mut migration = self.migration.config()?;
                migration.deadline = positive_ms(t.migration_ms, "migration_ms")?;
                migration
            },
            discovery: DiscoveryConfig {
                redis: self.discovery.source()?,
                amqp: self.discovery.amqp_source()?,
                health: self.health.as_ref().map(Health::check).transpose()?,
                damping: self.discovery.damping()?,
                docker: match &self.docker {
                    None => None,
                    Some(DockerSection { cap: Some(0), .. }) => {
                        return Err(ConfigError("docker.cap: must be at least 1".into()))
                    }
                    Some(docker) => Some(DockerConfig {
                        service: docker.service.clone().unwrap_or_else(|| "wscluster".into()),
                        network: docker.network.clone(),
                        image: docker.image.clone(),
                        cap: docker.cap.unwrap_or(16),
                        limits: docker.limits()?,
                    }),
                },
                swarm: match &self.swarm {
                    None => None,
                    Some(SwarmSection { cap: Some(0), .. }) => {
                        return Err(ConfigError("swarm.cap: must be at least 1".into()))
                    }
                    Some(swarm) => Some(SwarmConfig {
                        service: swarm.service.clone().unwrap_or_else(|| "wscluster".into()),
                        network: swarm.network.clone(),
                        scale: swarm.scale.unwrap_or(false),
                        cap: swarm.cap.unwrap_or(16),
                    }),
                },
            },
            events: match &self.events {
                None => None,
                Some(events)
                    if !events.amqp.starts_with("amqp://")
                        && !events.amqp.starts_with("amqps://") =>
                {
                    return Err(ConfigError(format!(
                        "events.amqp: `{}` is not an amqp:// URL",
                        events.amqp
                    )))
                }
                Some(events) => Some(EventsConfig {
                    url: events.amqp.clone(),
                    exchange: events
                        .exchange
                        .clone()
                        .unwrap_or_else(|| "wscluster.events".into()),
                }),
            },
            // `--tls-cert`/`--tls-key` only, for now.
            tls: None,
        })
    }
}

impl AdminSection {
    /// The admin access: a token from `env` (WSCLUSTER_ADMIN_TOKEN), else `token`, else
    /// `token_file`; and the networks.
    fn access(&self, env: Option<String>) -> Result<AdminAccess, ConfigError> {
        if self.token.is_some() && self.token_file.is_some() {
            return Err(ConfigError(
                "admin: give token or token_file, not both".into(),
            ));
        }
        let (text, field) = match (env, &self.token, &self.token_file) {
            (Some(env), ..) => (Some(env), "WSCLUSTER_ADMIN_TOKEN"),
            (None, Some(token), _) => (Some(token.clone()), "admin.token"),
            (None, None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!(
                        "admin.token_file: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                (Some(text), "admin.token_file")
            }
            (None, None, None) => (None, ""),
        };
        let token = text
            .map(|text| AdminToken::new(&text).map_err(|e| ConfigError(format!("{field}: {e}"))))
            .transpose()?;
        let backend_networks = self
            .backend_networks
            .iter()
            .enumerate()
            .map(|(i, net)| {
                net.parse::<IpNet>()
                    .map_err(|e| ConfigError(format!("admin.backend_networks[{i}]: `{net}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(AdminAccess {
            token,
            backend_networks,
        })
    }
}

impl Discovery {
    fn amqp_source(&self) -> Result<Option<(String, String)>, ConfigError> {
        let Some(url) = &self.amqp else {
            if self.amqp_exchange.is_some() {
                return Err(ConfigError(
                    "discovery.amqp_exchange needs discovery.amqp".into(),
                ));
            }
            return Ok(None);
        };
        if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
            return Err(ConfigError(format!(
                "discovery.amqp: `{url}` is not an amqp:// URL"
            )));
        }
        let exchange = self
            .amqp_exchange
            .clone()
            .unwrap_or_else(|| "wscluster.members".into());
        Ok(Some((url.clone(), exchange)))
    }

    /// Flap damping: on by default (4 departures within 60 s hold a member out for 30 s).
    fn damping(&self) -> Result<Option<FlapDamping>, ConfigError> {
        let limit = self.flap_limit.unwrap_or(4);
        let ms = |value: Option<u64>, field: &str| match value {
            Some(0) => Err(ConfigError(format!(
                "discovery.{field}: must be at least 1"
            ))),
            other => Ok(other.map(Duration::from_millis)),
        };
        let window = ms(self.flap_window_ms, "flap_window_ms")?;
        let hold_down = ms(self.hold_down_ms, "hold_down_ms")?;
        if limit == 0 {
            if window.is_some() || hold_down.is_some() {
                return Err(ConfigError(
                    "discovery: flap_window_ms and hold_down_ms need flap_limit above 0".into(),
                ));
            }
            return Ok(None);
        }
        Ok(Some(FlapDamping::new(
            limit,
            window.unwrap_or(Duration::from_secs(60)),
            hold_down.unwrap_or(Duration::from_secs(30)),
        )))
        // (The same defaults as `DiscoveryConfig::default`.)
    }

    fn source(&self) -> Result<Option<RedisSource>, ConfigError> {
        let Some(url) = &self.redis else {
            if self.service.is_some() || self.resync_ms.is_some() {
                return Err(ConfigError(
                    "discovery: service and resync_ms need redis".into(),
                ));
            }
            return Ok(None);
        };
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(ConfigError(format!(
                "discovery.redis: `{url}` is not a redis:// URL"
            )));
        }
        Ok(Some(RedisSource {
            url: url.clone(),
            service: self.service.clone().unwrap_or_else(|| "wscluster".into()),
            resync: Duration::from_millis(self.resync_ms.unwrap_or(1000).max(10)),
        }))
    }
}

impl Health {
    fn check(&self) -> Result<HealthCheck, ConfigError> {
        let check = match (self.check, &self.path) {
            (CheckKind::Http, path) => {
                let path = path.as_deref().unwrap_or("/health");
                if !path.starts_with('/') {
                    return Err(ConfigError(format!(
                        "health.path: `{path}` must start with /"
                    )));
                }
                HealthCheck::http(path)
            }
            (CheckKind::Tcp, None) => HealthCheck::tcp(),
            (CheckKind::Tcp, Some(_)) => {
                return Err(ConfigError("health.path: a tcp check has no path".into()))
            }
        };
        let ms = Duration::from_millis;
        let mut check = check.thresholds(self.up.unwrap_or(2), self.down.unwrap_or(2));
        if let Some(interval) = self.interval_ms {
            check = check.interval(ms(interval));
        }
        if let Some(timeout) = self.timeout_ms {
            check = check.timeout(ms(timeout));
        }
        Ok(check)
    }
}

impl MigrationSection {
    fn config(&self) -> Result<MigrationConfig, ConfigError> {
        let defaults = MigrationConfig::default();
        let (default_code, default_reason) = defaults.policy.close();
        let code = match self.close_code {
            // Codes a peer may send (RFC 6455 §7.4): not 1004-1006, 1015 or below 1000.
            Some(code @ (1000..=1003 | 1007..=1014 | 1016..=2999 | 3000..=4999)) => code,
            Some(code) => {
                return Err(ConfigError(format!(
                    "migration.close_code: {code} is not a close code a gateway may send"
                )))
            }
            None => default_code,
        };
        let reason = self.close_reason.as_deref().unwrap_or(default_reason);
        if reason.len() > 123 {
            return Err(ConfigError(
                "migration.close_reason: at most 123 bytes fit in a close frame".into(),
            ));
        }
        let policy = |name: Option<PolicyName>| match name {
            None | Some(PolicyName::Live) => MigrationPolicy::Live {
                code,
                reason: reason.into(),
            },
            Some(PolicyName::Reconnect) => MigrationPolicy::Reconnect {
                code,
                reason: reason.into(),
            },
        };
        let jitter = match self.jitter {
            Some(j) if !(0.0..=1.0).contains(&j) => {
                return Err(ConfigError(format!(
                    "migration.jitter: {j} is not a fraction from 0 to 1"
                )))
            }
            Some(j) => j,
            None => 0.2,
        };
        let pacing = match self.rate {
            None => defaults.pacing,
            Some(0) => Pacing::unlimited(),
            Some(rate) => Pacing::per_second(rate).jitter(jitter),
        };
        let mut routes = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            if !route.prefix.starts_with('/') {
                return Err(ConfigError(format!(
                    "migration.routes[{i}].prefix: `{}` must start with /",
                    route.prefix
                )));
            }
            routes.push((route.prefix.clone(), policy(Some(route.policy))));
        }
        Ok(MigrationConfig {
            policy: policy(self.policy),
            routes,
            pacing,
            drain_window: self
                .drain_ms
                .map_or(defaults.drain_window, Duration::from_millis),
            secret: self.secret()?,
            deadline: None,
        })
    }

    /// The secret from the file, inline, or `WSCLUSTER_MIGRATION_SECRET`, in that order.
    fn secret(&self) -> Result<Option<MigrationSecret>, ConfigError> {
        let secret = match (&self.secret_file, &self.secret) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "migration.secret: give secret or secret_file, not both".into(),
                ))
            }
            (Some(path), None) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("migration.secret_file: {}: {e}", path.display()))
            })?),
            (None, Some(secret)) => Some(secret.clone()),
            (None, None) => std::env::var(SECRET_ENV).ok(),
        };
        match secret.as_deref().map(str::trim) {
            None => Ok(None),
            Some(secret) if secret.len() < 16 => Err(ConfigError(
                "migration.secret: use at least 16 characters (32 random bytes is better)".into(),
            )),
            Some(secret) => Ok(Some(MigrationSecret::new(secret))),
        }
    }
}

/// Where the migration secret can come from besides the file.
pub const SECRET_ENV: &str = "WSCLUSTER_MIGRATION_SECRET";

/// A timeout that must not be zero (a zero deadline would end every connection at once).
fn positive_ms(value: Option<u64>, field: &str) -> Result<Option<Duration>, ConfigError> {
    match value {
        Some(0) => Err(ConfigError(format!("timeouts.{field}: must be at least 1"))),
        other => Ok(other.map(Duration::from_millis)),
    }
}

/// A byte limit where 0 means none.
fn byte_limit(value: Option<u64>, default: Option<u64>) -> Option<u64> {
    match value {
        None => default,
        Some(0) => None,
        Some(limit) => Some(limit),
    }
}

/// The reference binary's default: one worker per core (measured better than one shared
/// multi-threaded runtime on every axis; see `bench/README.md`).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_section_names_its_bad_fields() {
        let access = |text: &str| ConfigFile::parse(text).unwrap().admin.access(None);
        let ok = access(
            "[admin]\ntoken = \"0123456789abcdef0123\"\nbackend_networks = [\"10.0.0.0/8\", \"::1/128\"]",
        )
        .unwrap();
        assert!(ok.token.unwrap().matches("0123456789abcdef0123"));
        assert_eq!(ok.backend_networks.len(), 2);
        let short = access("[admin]\ntoken = \"short\"")
            .unwrap_err()
            .to_string();
        assert!(
            short.starts_with("admin.token: ") && short.contains("16"),
            "{short}"
        );
        let net = access("[admin]\nbackend_networks = [\"10.0.0.0/33\"]").unwrap_err();
        assert!(
            net.to_string().starts_with("admin.backend_networks[0]"),
            "{net}"
        );
        let both = access("[admin]\ntoken = \"x\"\ntoken_file = \"/nonexistent\"").unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let missing = access("[admin]\ntoken_file = \"/nonexistent/token\"").unwrap_err();
        assert!(
            missing.to_string().starts_with("admin.token_file"),
            "{missing}"
        );
        // The environment wins over the file.
        let file = ConfigFile::parse("[admin]\ntoken = \"from-the-file-0123\"").unwrap();
        let env = file
            .admin
            .access(Some("from-the-environment".into()))
            .unwrap();
        assert!(env.token.unwrap().matches("from-the-environment"));
    }

    #[test]
    fn flap_damping_is_on_by_default_and_configurable() {
        let damping = |text: &str| {
            ConfigFile::parse(text)
                .unwrap()
                .gateway_config()
                .unwrap()
                .discovery
                .damping
                .map(|d| d.to_string())
        };
        assert_eq!(
            damping("").as_deref(),
            Some("held out for 30s after 4 departures within 60s")
        );
        assert_eq!(
            damping("[discovery]\nflap_limit = 2\nflap_window_ms = 10000\nhold_down_ms = 5000")
                .as_deref(),
            Some("held out for 5s after 2 departures within 10s")
        );
        assert_eq!(damping("[discovery]\nflap_limit = 0"), None);
    }

    #[test]
    fn a_swarm_section_follows_the_labelled_services() {
        let config = ConfigFile::parse("[swarm]\nservice = \"chat\"\nnetwork = \"chat_net\"")
            .unwrap()
            .gateway_config()
            .unwrap();
        let swarm = config.discovery.swarm.unwrap();
        assert_eq!(
            (swarm.service.as_str(), swarm.network.as_deref()),
            ("chat", Some("chat_net"))
        );
        let default = ConfigFile::parse("[swarm]")
            .unwrap()
            .gateway_config()
            .unwrap();
        assert_eq!(default.discovery.swarm.unwrap().service, "wscluster");
    }

    #[test]
    fn docker_limits_are_checked() {
        let limits = |text: &str| {
            let file = ConfigFile::parse(text).unwrap();
            file.docker.as_ref().unwrap().limits()
        };
        let set = limits("[docker]\nmemory_mb = 64\ncpus = 0.5\npids = 32").unwrap();
        assert_eq!((set.memory_bytes, set.cpus, set.pids), (64 << 20, 0.5, 32));
        let low = limits("[docker]\nmemory_mb = 1").unwrap_err().to_string();
        assert!(low.starts_with("docker.memory_mb"), "{low}");
        let cpus = limits("[docker]\ncpus = 0.0").unwrap_err().to_string();
        assert!(cpus.starts_with("docker.cpus"), "{cpus}");
    }

    #[test]
    fn a_full_file_sets_every_field() {
        let file = ConfigFile::parse(
            r#"
            [listen]
            public = "127.0.0.1:9000"
            [routing]
            key = [{ header = "x-room" }, { cookie = "room" }]
            missing_key = "round-robin"
            load_factor = 1.25
            [limits]
            max_connections = 7
            max_http_connections = 9
            max_head_bytes = 9000
            max_headers = 20
            max_frame_bytes = 0
            max_message_bytes = 1000
            [timeouts]
            idle_ms = 1500
            shutdown_window_ms = 10
            shutdown_grace_ms = 20
            head_ms = 30
            half_close_ms = 40
            switch_ms = 50
            tcp_keepalive_ms = 0
            migration_ms = 60
            [discovery]
            redis = "redis://127.0.0.1:6390"
            service = "chat"
            [health]
            check = "http"
            interval_ms = 250
            [migration]
            policy = "reconnect"
            close_code = 4000
            rate = 0
            drain_ms = 250
            routes = [{ prefix = "/live/", policy = "live" }]
            [[backends]]
            id = "b1"
            address = "127.0.0.1:7100"
            "#,
        )
        .unwrap();
        let config = file.gateway_config().unwrap();
        assert_eq!(config.public.port(), 9000);
        assert_eq!(config.admin.port(), 7001, "default kept");
        assert_eq!(config.key.sources().len(), 2);
        assert_eq!(config.missing_key, MissingKeyPolicy::RoundRobin);
        assert_eq!(config.load_factor.map(LoadFactor::get), Some(1.25));
        assert_eq!(config.max_connections, 7);
        assert_eq!(file.sets_caps(), (true, true));
        assert_eq!(
            (
                config.max_http_connections,
                config.max_head_bytes,
                config.max_headers
            ),
            (9, 9000, 20)
        );
        assert_eq!(
            config.relay.limits,
            FrameLimits {
                max_frame: None,
                max_message: Some(1000)
            }
        );
        assert_eq!(config.relay.idle_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(config.shutdown_window, Duration::from_millis(10));
        let ms = Duration::from_millis;
        assert_eq!(
            (config.shutdown_grace, config.head_timeout),
            (ms(20), ms(30))
        );
        assert_eq!(
            (config.relay.half_close_timeout, config.relay.switch_timeout),
            (ms(40), ms(50))
        );
        assert_eq!(config.relay.tcp_keepalive, None);
        assert_eq!(config.migration.deadline, Some(ms(60)));
        assert_eq!(file.backends()[0].0.as_str(), "b1");
        let redis = config.discovery.redis.unwrap();
        assert_eq!(
            (redis.url.as_str(), redis.service.as_str()),
            ("redis://127.0.0.1:6390", "chat")
        );
        assert_eq!(
            config.discovery.health.unwrap(),
            HealthCheck::http("/health").interval(Duration::from_millis(250))
        );
        let migration = config.migration;
        assert_eq!(
            migration.policy,
            MigrationPolicy::Reconnect {
                code: 4000,
                reason: "Service Restart".into()
            }
        );
        assert_eq!(migration.pacing, Pacing::unlimited());
        assert_eq!(migration.drain_window, Duration::from_millis(250));
        assert_eq!(migration.routes[0].0, "/live/");
        assert!(matches!(
            migration.routes[0].1,
            MigrationPolicy::Live { code: 4000, .. }
        ));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[listen]\npublic = \"nowhere\"", "public"),
            (
                "[limits]\nmax_conections = 1",
                "unknown field `max_conections`",
            ),
            (
                "[routing]\nkey = [{ path = \"/connect\" }]",
                "routing.key[0].path",
            ),
            (
                "[routing]\nkey = [{ header = \"bad header\" }]",
                "routing.key[0].header",
            ),
            ("[routing]\nmissing_key = \"sometimes\"", "missing_key"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            ("[[backends]]\nid = \"a\"", "missing field `address`"),
            ("[migration]\nclose_code = 1006", "migration.close_code"),
            ("[routing]\nload_factor = 0.5", "routing.load_factor"),
            ("[discovery]\nredis = \"localhost:6379\"", "discovery.redis"),
            ("[discovery]\nservice = \"chat\"", "need redis"),
            ("[health]\ncheck = \"tcp\"\npath = \"/x\"", "health.path"),
            ("[health]\ncheck = \"icmp\"", "check"),
            ("[events]\namqp = \"127.0.0.1:5672\"", "events.amqp"),
            ("[docker]\ncap = 0", "docker.cap"),
            ("[swarm]\ncap = 0", "swarm.cap"),
            ("[discovery]\nhold_down_ms = 0", "discovery.hold_down_ms"),
            (
                "[discovery]\nflap_limit = 0\nhold_down_ms = 10",
                "need flap_limit above 0",
            ),
            ("[swarm]\nservce = \"x\"", "servce"),
            ("[discovery]\namqp = \"rabbit\"", "discovery.amqp"),
            ("[migration]\njitter = 2.0", "migration.jitter"),
            ("[migration]\npolicy = \"teleport\"", "policy"),
            (
                "[migration]\nroutes = [{ prefix = \"game\", policy = \"live\" }]",
                "migration.routes[0].prefix",
            ),
            ("[timeouts]\nhead_ms = 0", "timeouts.head_ms"),
            ("[timeouts]\nclose_ms = 0", "timeouts.close_ms"),
            ("[limits]\nmax_head_bytes = 100", "limits.max_head_bytes"),
            ("[limits]\nmax_headers = 0", "limits.max_headers"),
            (
                "[limits]\nmax_http_connections = 0",
                "limits.max_http_connections",
            ),
            ("[migration]\nsecret = \"short\"", "migration.secret"),
            (
                "[migration]\nsecret = \"0123456789abcdef\"\nsecret_file = \"/x\"",
                "not both",
            ),
            (
                "[migration]\nsecret_file = \"/nonexistent/s\"",
                "migration.secret_file",
            ),
        ];
        for (text, expected) in cases {
            let error = ConfigFile::parse(text)
                .and_then(|f| f.gateway_config())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text:?} gave {error:?}");
        }
    }
}
