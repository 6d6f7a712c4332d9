//! The gateway on Docker membership, end to end with real containers of our backend image:
//! labelled containers join the ring, the admin API adds one and the affected clients move to
//! it live, a stopped container's clients move, and an unlabelled container is never touched.

use std::{collections::HashMap, time::Duration};

use discovery::ContainerLimits;
use futures_util::{SinkExt, StreamExt};
use gateway_bin::{
    config::{DockerConfig, GatewayConfig, Listen, Shutdown},
    gateway::Gateway,
};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wscluster_testkit::{add_backend, http, ring_members, ring_of, wait_for_members, DockerHost};

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn next_json(client: &mut Client) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), client.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Sends a message and returns the server that echoed it, after any `connected` message of
/// a live move (checked to name where the client came from).
async fn echo_server(client: &mut Client, was_on: &str) -> String {
    client.send(Message::text("where am i")).await.unwrap();
    let mut on = was_on.to_owned();
    loop {
        let message = next_json(client).await;
        if message["type"] == "connected" {
            assert_eq!(message["migratedFrom"].as_str(), Some(on.as_str()));
            on = message["server"].as_str().unwrap().to_owned();
        } else if message["type"] == "echo" {
            assert_eq!(message["server"].as_str(), Some(on.as_str()));
            return on;
        }
    }
}

/// A gateway on the Docker membership of `host`'s service: it may start up to 5 containers
/// of the backend image, and moves users without pacing.
fn scaling_config(host: &DockerHost) -> GatewayConfig {
    let mut config = GatewayConfig {
        listen: Listen::ephemeral(),
        shutdown: Shutdown {
            window: Duration::from_millis(100),
            ..Shutdown::default()
        },
        ..GatewayConfig::default()
    };
    config.migration.pacing = tower_ws_migrate::Pacing::unlimited();
    config.discovery.docker = Some(DockerConfig {
        service: host.service().to_owned(),
        network: Some(host.network().to_owned()),
        image: Some("wscluster-backend".into()),
        cap: 5,
        limits: ContainerLimits::default(),
    });
    config
}

/// Connects users `dock-0` to `dock-29`, each asserted to land on its owner on the ring of
/// `names`; returns each user with its client and the server it is on.
async fn clients_on_their_owners(
    gateway: &Gateway,
    names: &[String],
) -> Vec<(String, Client, String)> {
    let mut clients: Vec<(String, Client, String)> = Vec::new();
    for n in 0..30 {
        let user = format!("dock-{n}");
        let url = format!("ws://{}/connect/{user}", gateway.public);
        let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let server = next_json(&mut client).await["server"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            server,
            ring_of(names).route(user.as_bytes()).unwrap().id().as_str()
        );
        clients.push((user, client, server));
    }
    clients
}

/// The unlabelled container is never a member, and the admin API refuses to touch it.
async fn assert_the_unlabelled_container_is_left_alone(
    gateway: &Gateway,
    host: &DockerHost,
    unlabelled: &str,
) {
    assert!(!ring_members(gateway.admin)
        .await
        .contains(&unlabelled.to_owned()));
    let (status, body) = http(
        gateway.admin,
        "DELETE",
        &format!("/admin/backends/{unlabelled}"),
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("does not carry our service label"), "{body}");
    assert!(host.running(unlabelled).await, "still running");
}

#[tokio::test]
async fn the_gateway_follows_labelled_containers_and_scales_them() {
    let Some(host) = DockerHost::start("scale").await else {
        return;
    };
    let unlabelled = format!("{}-stranger", host.service());
    host.run_unlabelled(&unlabelled).await;

    let gateway = Gateway::start(scaling_config(&host), vec![]).await.unwrap();

    // Three containers through the admin API: the ring follows them once they are healthy.
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(add_backend(gateway.admin).await);
    }
    names.sort();
    wait_for_members(gateway.admin, &names).await;

    let mut clients = clients_on_their_owners(&gateway, &names).await;

    // A fourth container: the users it now owns move to it live.
    names.push(add_backend(gateway.admin).await);
    names.sort();
    wait_for_members(gateway.admin, &names).await;
    let four = ring_of(&names);
    let mut moved = 0;
    for (user, client, server) in &mut clients {
        let owner = four.route(user.as_bytes()).unwrap().id().to_string();
        let now = echo_server(client, server).await;
        assert_eq!(now, owner, "{user} is on its owner");
        moved += usize::from(now != *server);
        *server = now;
    }
    assert!(moved > 0, "the new container took some users");

    // An operator stops one: it fails its health check while draining, leaves the ring,
    // and its users move live before it exits.
    let stopped = names.remove(0);
    host.stop(&stopped).await;
    wait_for_members(gateway.admin, &names).await;
    let three = ring_of(&names);
    let mut per_server: HashMap<String, usize> = HashMap::new();
    for (user, client, server) in &mut clients {
        let now = echo_server(client, server).await;
        assert_eq!(
            now,
            three.route(user.as_bytes()).unwrap().id().as_str(),
            "{user}"
        );
        *per_server.entry(now).or_default() += 1;
    }
    assert!(!per_server.contains_key(&stopped));

    assert_the_unlabelled_container_is_left_alone(&gateway, &host, &unlabelled).await;

    // Removing one of ours through the API drains it, then stops and removes its container.
    let leaving = names[0].clone();
    let (status, body) = http(
        gateway.admin,
        "DELETE",
        &format!("/admin/backends/{leaving}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!host.running(&leaving).await);
    drop(clients);
    gateway.shutdown().await;
}

/// Twenty concurrent `POST /admin/backends` against a cap of 3 start exactly 3 containers
/// (the others get 409 with a reason), each with the configured memory, CPU and pids limits.
#[tokio::test]
async fn the_cap_holds_under_concurrent_posts_and_containers_get_limits() {
    let Some(host) = DockerHost::start("cap").await else {
        return;
    };
    let mut config = GatewayConfig {
        listen: Listen::ephemeral(),
        shutdown: Shutdown {
            window: Duration::from_millis(100),
            ..Shutdown::default()
        },
        ..GatewayConfig::default()
    };
    let limits = ContainerLimits {
        memory_bytes: 64 << 20,
        cpus: 0.5,
        pids: 64,
    };
    config.discovery.docker = Some(DockerConfig {
        service: host.service().to_owned(),
        network: Some(host.network().to_owned()),
        image: Some("wscluster-backend".into()),
        cap: 3,
        limits,
    });
    let gateway = Gateway::start(config, vec![]).await.unwrap();
    let admin = gateway.admin;
    let posts = (0..20).map(|_| tokio::spawn(http(admin, "POST", "/admin/backends", "")));
    let mut statuses = HashMap::<u16, usize>::new();
    for post in posts {
        let (status, body) = post.await.unwrap();
        if status == 409 {
            assert!(body.contains("cap"), "{body}");
        }
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(statuses, HashMap::from([(201, 3), (409, 17)]));
    let containers = host.containers().await;
    assert_eq!(containers.len(), 3, "{containers:?}");
    for name in &containers {
        assert_eq!(
            host.limits(name).await,
            (64 << 20, 500_000_000, 64),
            "{name}"
        );
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_container_with_a_bad_port_or_weight_label_is_left_out_and_counted() {
    let Some(host) = DockerHost::start("labels").await else {
        return;
    };
    let name = |suffix: &str| format!("{}-{suffix}", host.service());
    host.run_labelled(&name("good"), &["wscluster.port=7100"])
        .await;
    host.run_labelled(&name("bad-port"), &["wscluster.port=71OO"])
        .await;
    host.run_labelled(&name("bad-weight"), &["wscluster.weight=heavy"])
        .await;
    let metrics = discovery::DiscoveryMetrics::default();
    let source = discovery::DockerSource::new(host.service())
        .network(host.network())
        .metrics(metrics.clone());
    let mut changes = source.discover();
    let mut members = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while members.is_empty() {
        match tokio::time::timeout_at(deadline, changes.next()).await {
            Ok(Some(Ok(tower::discover::Change::Insert(id, _)))) => members.push(id.to_string()),
            other => panic!("no member within 60 s: {other:?}"),
        }
    }
    assert_eq!(members, [name("good")]);
    let invalid = || {
        metrics.errors(
            discovery::Source::docker,
            discovery::ErrorKind::invalid_entry,
        )
    };
    let counted = wscluster_testkit::eventually(Duration::from_secs(10), async || invalid() >= 2);
    assert!(counted.await, "both bad labels counted: {}", invalid());
    let more = tokio::time::timeout(Duration::from_secs(2), changes.next()).await;
    assert!(more.is_err(), "a bad container joined later: {more:?}");
}

/// Docker discovery's work per event does not grow with the service: after one listing,
/// each membership event costs one inspection of the container it names, and the exec
/// events of every health probe cost nothing.
#[tokio::test]
async fn docker_discovery_inspects_only_what_an_event_names() {
    let Some(host) = DockerHost::start("per-event").await else {
        return;
    };
    let name = |n: usize| format!("{}-{n}", host.service());
    const EXISTING: usize = 6;
    for n in 0..EXISTING {
        host.run_labelled(&name(n), &[]).await;
    }
    let source = discovery::DockerSource::new(host.service()).network(host.network());
    let mut changes = source.discover();
    let mut members = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while members.len() < EXISTING {
        match tokio::time::timeout_at(deadline, changes.next()).await {
            Ok(Some(Ok(tower::discover::Change::Insert(id, _)))) => {
                members.insert(id.to_string());
            }
            Ok(Some(Ok(tower::discover::Change::Remove(id)))) => {
                members.remove(id.as_str());
            }
            other => panic!(
                "{} of {EXISTING} healthy within 60 s: {other:?}",
                members.len()
            ),
        }
    }
    // Quiet: every container's health probe runs each second, and none changes anything.
    // "Nothing happens" needs a window: three probe rounds, each seen in every container's
    // health log. A probe's exec events reach the source within far less than the 1 s
    // between rounds, so those of the first two rounds at least are counted here.
    let quiet = source.inspections();
    let all: Vec<String> = (0..EXISTING).map(name).collect();
    probe_rounds(&all, 3).await;
    assert_eq!(
        source.inspections(),
        quiet,
        "health probes cost inspections"
    );

    host.run_labelled(&name(EXISTING), &[]).await;
    let joined = wscluster_testkit::eventually(Duration::from_secs(30), async || {
        matches!(
            tokio::time::timeout(Duration::from_millis(100), changes.next()).await,
            Ok(Some(Ok(tower::discover::Change::Insert(..))))
        )
    });
    assert!(joined.await, "the new container joined");
    // Inspections that come late would show within two more probe rounds of every
    // container, the new one's included.
    let all: Vec<String> = (0..=EXISTING).map(name).collect();
    probe_rounds(&all, 2).await;
    let spent = source.inspections() - quiet;
    // Its start and its health turning healthy; one listing would inspect all 7.
    assert!(
        (1..=3).contains(&spent),
        "{spent} inspections for one container joining"
    );
}

/// The health probes Docker keeps in container `name`'s health log (its last five), each
/// named by its start time.
async fn health_probes(name: &str) -> Vec<String> {
    let output = tokio::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .State.Health.Log}}{{.Start}}\n{{end}}",
            name,
        ])
        .output()
        .await
        .expect("docker runs");
    assert!(output.status.success(), "docker inspect {name} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits until every container of `names` has run `rounds` more health probes (at most 5,
/// the length of Docker's health log); panics after 60 s.
async fn probe_rounds(names: &[String], rounds: usize) {
    assert!(rounds <= 5, "Docker's health log keeps 5 probes");
    let mut before = Vec::new();
    for name in names {
        before.push(health_probes(name).await);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = Vec::new();
        for (name, seen) in names.iter().zip(&before) {
            let probes = health_probes(name).await;
            if probes.iter().filter(|p| !seen.contains(p)).count() < rounds {
                behind.push(name);
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {rounds} health probes within 60 s in {behind:?}"
        );
        // Docker runs them once a second: look again in a fifth of that.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
