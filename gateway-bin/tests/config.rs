//! The config file: the example and shipped files parse, every field is read, and a bad
//! value is an error naming the field and its line.

use std::time::Duration;

use discovery::HealthCheck;
use tower_hashring::{LoadFactor, MissingKeyPolicy};
use tower_ws_migrate::{MigrationPolicy, Pacing};
use tower_ws_proxy::frame::FrameLimits;

use gateway_bin::config::*;

const EXAMPLE: &str = include_str!("../gateway.example.toml");

/// The example file, with its secrets in files that exist.
fn example() -> GatewayConfig {
    let dir = std::env::temp_dir().join(format!("wscluster-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = EXAMPLE.to_owned();
    for (name, secret) in [
        ("wscluster-admin", "admin-token-from-a-file\n"),
        ("wscluster-migration", "migration-secret-from-a-file\n"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, secret).unwrap();
        text = text.replace(&format!("/run/secrets/{name}"), path.to_str().unwrap());
    }
    GatewayConfig::parse(&text).unwrap()
}

#[test]
fn the_example_file_sets_the_gateway_sections() {
    let config = example();
    assert_eq!(config.listen.metrics.map(|m| m.port()), Some(9100));
    assert_eq!(config.listen.workers, 2);
    assert!(config
        .admin
        .token
        .unwrap()
        .matches("admin-token-from-a-file"));
    assert_eq!(config.admin.backend_networks.len(), 1);
    assert_eq!(config.routing.key.sources().len(), 2);
    assert_eq!(config.routing.missing_key, MissingKeyPolicy::Reject);
    assert_eq!(config.routing.load_factor.map(LoadFactor::get), Some(1.25));
    assert_eq!(config.proxy.max_websockets, Some(100_000));
    assert_eq!(config.shutdown.window, Duration::from_secs(5));
    assert_eq!(config.backends[0].id, "backend-a");
    let events = config.events.unwrap();
    assert_eq!(events.exchange, "wscluster.events");
}

#[test]
fn the_example_file_sets_the_library_sections() {
    let config = example();
    let tls = config.tls.unwrap();
    assert_eq!(
        (tls.sni.len(), tls.min_version.to_string()),
        (1, "1.2".into())
    );
    assert_eq!(config.http.max_head_bytes, 16384);
    assert_eq!(config.client_limits.websockets, Some(100));
    assert_eq!(config.http.proxy_protocol_from.len(), 1);
    assert_eq!(config.client_limits.burst(), 40);
    assert_eq!(config.client_limits.trusted_proxies.len(), 1);
    let cap = config
        .http
        .open_connections
        .as_ref()
        .map(|c| c.available_permits());
    assert_eq!(cap, Some(10_000));
    assert_eq!(config.relay.idle_timeout, None);
    assert_eq!(config.relay.limits, FrameLimits::default());
    assert_eq!(config.relay.tcp_keepalive, Some(Duration::from_secs(30)));
    assert_eq!(config.upstream.connect_timeout, Duration::from_secs(2));
    let migration = config.migration;
    assert_eq!(migration.policy, MigrationPolicy::live());
    assert_eq!(migration.routes[0].policy, MigrationPolicy::reconnect());
    assert_eq!(migration.pacing, Pacing::default());
    assert_eq!(migration.deadline, Some(Duration::from_secs(14)));
    assert!(migration.secret.is_some());
    let discovery = config.discovery;
    assert_eq!(discovery.redis.unwrap().resync, Duration::from_secs(1));
    assert_eq!(discovery.amqp.unwrap().exchange, "wscluster.members");
    assert_eq!(discovery.docker.unwrap().limits.memory_bytes, 256 << 20);
    assert!(discovery.swarm.unwrap().scale);
    assert_eq!(discovery.health, Some(HealthCheck::http("/health")));
    assert!(discovery.damping.is_some());
}

#[test]
fn the_shipped_files_parse() {
    for text in [
        include_str!("../../docker/gateway.toml"),
        include_str!("../../docker/swarm-gateway.toml"),
        include_str!("../../docker/swarm-gateway-multinode.toml"),
    ] {
        GatewayConfig::parse(text).unwrap();
    }
}

#[test]
fn values_other_than_the_defaults_are_read() {
    let config = GatewayConfig::parse(
        r#"
        [relay]
        idle_timeout = "90s"
        tcp_keepalive = "off"
        limits = { max_frame = 0, max_message = 1000 }
        [migration]
        policy = { mode = "reconnect", close_code = 4000 }
        pacing = { rate = 0 }
        [discovery]
        damping = false
        "#,
    )
    .unwrap();
    assert_eq!(config.relay.idle_timeout, Some(Duration::from_secs(90)));
    assert_eq!(config.relay.tcp_keepalive, None);
    let limits = FrameLimits {
        max_frame: None,
        max_message: Some(1000),
    };
    assert_eq!(config.relay.limits, limits);
    assert_eq!(config.migration.policy.close(), (4000, "Service Restart"));
    assert_eq!(config.migration.pacing, Pacing::unlimited());
    assert!(config.discovery.damping.is_none());
    // A file without [listen] serves on one worker per core; the type's own default is 0.
    assert!(config.listen.workers >= 1);
    assert_eq!(GatewayConfig::default().listen.workers, 0);
}

#[test]
fn the_environment_wins_over_the_file() {
    let file = GatewayConfig::parse("[admin]\ntoken = \"from-the-file-0123\"").unwrap();
    let env = |name: &str| match name {
        ADMIN_TOKEN_ENV => Some("from-the-environment".to_owned()),
        MIGRATION_SECRET_ENV => Some("secret-of-the-environment".to_owned()),
        _ => None,
    };
    let config = file.with_env(env).unwrap();
    assert!(config.admin.token.unwrap().matches("from-the-environment"));
    assert!(config.migration.secret.is_some());
    let short = GatewayConfig::default().with_env(|_| Some("short".into()));
    assert!(short.unwrap_err().to_string().starts_with(ADMIN_TOKEN_ENV));
}

/// A bad value, and what its error must say: the field's path, then why.
const BAD_VALUES: &[(&str, &str)] = &[
    ("[listen]\npublic = \"nowhere\"", "listen.public: "),
    (
        "[http]\nmax_conections = 1",
        "unknown field `max_conections`",
    ),
    (
        "[http]\nopen_connections = 0",
        "http.open_connections: must be at least 1",
    ),
    (
        "[http]\nmax_head_bytes = 100",
        "http.max_head_bytes: 100 is below",
    ),
    ("[http]\nmax_headers = 0", "http.max_headers: "),
    ("[http]\nhead_timeout = \"0s\"", "http.head_timeout: "),
    (
        "[http.http2]\nstream_window = 100",
        "http.http2.stream_window: 100 is outside",
    ),
    (
        "[upstream]\ntls = { ca = \"/nonexistent/backends-ca.pem\" }",
        "upstream.tls: cannot read /nonexistent/backends-ca.pem",
    ),
    (
        "[routing]\nkey = [{ path = \"/connect\" }]",
        "routing.key[0]: ",
    ),
    (
        "[routing]\nkey = [{ header = \"bad header\" }]",
        "routing.key[0]: ",
    ),
    ("[routing]\nkey = []", "routing.key: give at least one"),
    (
        "[routing]\nmissing_key = \"sometimes\"",
        "routing.missing_key: ",
    ),
    ("[routing]\nload_factor = 0.5", "routing.load_factor: "),
    ("[proxy]\nmax_websockets = 0", "proxy.max_websockets: "),
    (
        "[client_limits]\nwebsockets = 0",
        "client_limits.websockets: must be at least 1",
    ),
    (
        "[client_limits]\nhandshakes_per_second = 0",
        "client_limits.handshakes_per_second: ",
    ),
    (
        "[client_limits]\nexempt = [\"10.0.0.0/40\"]",
        "client_limits.exempt[0]: ",
    ),
    ("[relay]\nclose_timeout = \"0s\"", "relay.close_timeout: "),
    (
        "[relay]\nidle_timeout = \"soon\"",
        "relay.idle_timeout: `soon`",
    ),
    (
        "[upstream]\nconnect_timeout = \"0s\"",
        "upstream.connect_timeout: ",
    ),
    ("[[backends]]\nid = \"a\"", "missing field `address`"),
    (
        "[migration]\npolicy = \"teleport\"",
        "migration.policy: unknown variant `teleport`",
    ),
    (
        "[migration]\npolicy = { mode = \"live\", close_code = 1006 }",
        "migration.policy: close_code: 1006",
    ),
    (
        "[migration]\npacing = { jitter = 2.0 }",
        "migration.pacing: jitter: 2",
    ),
    (
        "[migration]\nroutes = [{ prefix = \"game\", policy = \"live\" }]",
        "migration.routes[0].prefix: ",
    ),
    (
        "[migration]\nsecret = \"short\"",
        "migration.secret: use at least 16",
    ),
    (
        "[migration]\nsecret = { file = \"/nonexistent/s\" }",
        "migration.secret: cannot read /nonexistent/s",
    ),
    ("[migration]\ndeadline = \"0s\"", "migration.deadline: "),
    (
        "[admin]\ntoken = \"short\"",
        "admin.token: an admin token needs at least 16",
    ),
    (
        "[admin]\nbackend_networks = [\"10.0.0.0/33\"]",
        "admin.backend_networks[0]: ",
    ),
    (
        "[discovery.redis]\nurl = \"localhost:6379\"",
        "discovery.redis.url: `localhost:6379` is not a redis:// URL",
    ),
    (
        "[discovery.redis]\nservice = \"chat\"",
        "missing field `url`",
    ),
    ("[discovery.amqp]\nurl = \"rabbit\"", "discovery.amqp.url: "),
    (
        "[discovery.health]\ncheck = \"tcp\"\npath = \"/x\"",
        "discovery.health: a tcp check has no path",
    ),
    (
        "[discovery.health]\ncheck = \"icmp\"",
        "discovery.health.check: ",
    ),
    (
        "[discovery.damping]\nhold_down = \"0s\"",
        "discovery.damping.hold_down: ",
    ),
    (
        "[discovery.docker]\ncap = 0",
        "discovery.docker.cap: must be at least 1",
    ),
    (
        "[discovery.docker.limits]\nmemory_bytes = 1",
        "discovery.docker.limits.memory_bytes: ",
    ),
    (
        "[discovery.docker.limits]\ncpus = 0.0",
        "discovery.docker.limits.cpus: ",
    ),
    ("[discovery.swarm]\nservce = \"x\"", "servce"),
    ("[events]\nurl = \"127.0.0.1:5672\"", "events.url: "),
    (
        "[cluster]\ninterval = \"0s\"",
        "cluster.interval: must be longer",
    ),
    ("[cluster]\npeers = [\"gateway-2\"]", "cluster.peers[0]: "),
];

#[test]
fn errors_name_the_field() {
    for &(text, expected) in BAD_VALUES {
        let error = GatewayConfig::parse(text).unwrap_err().to_string();
        assert!(error.contains(expected), "{text:?} gave {error:?}");
        assert!(
            error.contains("(line "),
            "{text:?} gave {error:?} without a line"
        );
    }
}

#[test]
fn a_file_of_the_older_layout_says_where_its_sections_went() {
    let error = GatewayConfig::parse("[timeouts]\nhead_ms = 100")
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `timeouts`"), "{error}");
    assert!(error.contains("moved to [http]"), "{error}");
    let error = GatewayConfig::parse("[health]\ncheck = \"tcp\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("[discovery.health]"), "{error}");
}
