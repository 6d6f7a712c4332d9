//! Swarm discovery on a real single-node swarm (created and left by the test when the
//! engine is not in one already): a labelled Swarm service's running tasks are members with
//! ids stable per replica slot, a replaced task takes back its slot's id, and a scale-up adds
//! the next slot. Bounded: every wait gives up after a minute.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use discovery::{Backend, MemberChanges, SwarmSource};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};
use tokio_tungstenite::tungstenite::Message;
use tower::discover::Change;

async fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("docker runs");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Tests in this file share the engine's one swarm: they take turns.
static SWARM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The engine in a swarm for one test: created (and left when dropped) unless it was in one
/// already; `None` (skip) without docker or our images, unless `CI` is set.
struct Swarm {
    created: bool,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Swarm {
    async fn join(images: &[&str]) -> Option<Self> {
        let turn = SWARM.lock().await;
        for image in images {
            let found = Command::new("docker")
                .args(["image", "inspect", image])
                .output()
                .await;
            if !found.is_ok_and(|o| o.status.success()) {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "no docker engine or no {image} image: run docker/build-images.sh"
                );
                wscluster_testkit::skipped(&format!(
                    "no docker or no {image} image (docker/build-images.sh)"
                ));
                return None;
            }
        }
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).await;
        let created = state != "active";
        if created {
            docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).await;
        }
        Some(Self {
            created,
            _turn: turn,
        })
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.created {
            let _ = std::process::Command::new("docker")
                .args(["swarm", "leave", "--force"])
                .output();
        }
    }
}

/// Waits (at most 30 s) until no container of `label=value` is left.
fn wait_containers_gone(filter: &str) {
    for _ in 0..150 {
        let left = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", filter])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if !left {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A swarm for the test, its overlay network and its service; all removed when dropped
/// (and the swarm left, if the test created it).
struct SwarmHost {
    network: String,
    service: String,
    label: String,
    _swarm: Swarm,
}

impl SwarmHost {
    async fn start() -> Option<Self> {
        let swarm = Swarm::join(&["wscluster-backend"]).await?;
        let suffix = std::process::id();
        let host = Self {
            network: format!("wstest-swarm-net-{suffix}"),
            service: format!("wstest-swarm-{suffix}"),
            label: format!("wstest-swarm-{suffix}"),
            _swarm: swarm,
        };
        docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            &host.network,
        ])
        .await;
        Some(host)
    }

    async fn deploy(&self, replicas: u32) {
        self.deploy_labelled(replicas, "wscluster.port=7100").await;
    }

    /// The address on the test's network of the container of member `id` (`<service>.<slot>`).
    async fn container_address(&self, id: &str) -> String {
        let container = docker(&["ps", "-q", "--filter", &format!("name={id}.")]).await;
        let template = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        docker(&["inspect", "-f", &template, &container]).await
    }

    /// Deploys the service with `port_label` (`wscluster.port=…`) as its port label.
    async fn deploy_labelled(&self, replicas: u32, port_label: &str) {
        let replicas = replicas.to_string();
        let label = format!("wscluster.service={}", self.label);
        docker(&[
            "service",
            "create",
            "--detach",
            "--name",
            &self.service,
            "--replicas",
            &replicas,
            "--network",
            &self.network,
            "--endpoint-mode",
            "dnsrr",
            "--label",
            &label,
            "--label",
            port_label,
            "--env",
            "WSBACKEND_ID={{.Service.Name}}.{{.Task.Slot}}",
            "wscluster-backend",
        ])
        .await;
    }
}

impl Drop for SwarmHost {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = std::process::Command::new("docker").args(args).output();
        };
        run(&["service", "rm", &self.service]);
        // The service's containers go first; the network can only go after them.
        wait_containers_gone(&format!(
            "label=com.docker.swarm.service.name={}",
            self.service
        ));
        run(&["network", "rm", &self.network]);
    }
}

/// Applies changes until `done` holds; panics after a minute.
async fn until(
    stream: &mut MemberChanges,
    members: &mut BTreeMap<String, Backend>,
    done: impl Fn(&BTreeMap<String, Backend>) -> bool,
) {
    wscluster_testkit::members_until(stream, members, Duration::from_secs(60), done).await;
}

/// Applies changes until one names `slot` (an insert or a removal); panics after a minute,
/// as it waits for a replaced task's slot.
async fn until_slot_changes(
    stream: &mut MemberChanges,
    members: &mut BTreeMap<String, Backend>,
    slot: &str,
) {
    let changed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.next().await {
                Some(Ok(Change::Insert(id, backend))) => {
                    let id = id.to_string();
                    let done = id == slot;
                    members.insert(id, backend);
                    if done {
                        return;
                    }
                }
                Some(Ok(Change::Remove(id))) => {
                    members.remove(id.as_str());
                    if id.as_str() == slot {
                        return;
                    }
                }
                other => panic!("the stream ended: {other:?}"),
            }
        }
    });
    changed
        .await
        .expect("slot 2's replacement seen within a minute");
}

#[tokio::test]
async fn swarm_tasks_are_members_with_ids_stable_per_slot() {
    let Some(host) = SwarmHost::start().await else {
        return;
    };
    host.deploy(3).await;
    let mut stream = SwarmSource::new(host.label.as_str())
        .network(host.network.as_str())
        .resync(Duration::from_millis(200))
        .discover();
    let mut members = BTreeMap::new();
    let slots =
        |n: u32| -> Vec<String> { (1..=n).map(|s| format!("{}.{s}", host.service)).collect() };
    let expected = slots(3);
    until(&mut stream, &mut members, |m| {
        m.keys().cloned().collect::<Vec<_>>() == expected
    })
    .await;
    let node = docker(&["info", "--format", "{{.Name}}"]).await;
    for (id, backend) in &members {
        assert_eq!(backend.address.port(), 7100, "{backend:?}");
        assert_eq!(
            backend.metadata.get("node"),
            Some(&node),
            "the node each task runs on: {backend:?}"
        );
        // Read from the Swarm API (the task's network attachments), it is the address the
        // task's container has on the network.
        assert_eq!(
            backend.address.ip().to_string(),
            host.container_address(id).await,
            "{id}'s address"
        );
    }

    // A task's container dies: Swarm replaces it, and the slot's id comes back.
    let slot_two = format!("{}.2", host.service);
    let container = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={}", host.service),
        "--filter",
        &format!("name={}.2.", host.service),
    ])
    .await;
    assert!(!container.is_empty(), "slot 2's container");
    docker(&["rm", "-f", &container]).await;
    // Either it leaves and comes back, or it comes back at once at a new address.
    until_slot_changes(&mut stream, &mut members, &slot_two).await;
    until(&mut stream, &mut members, |m| {
        m.keys().cloned().collect::<Vec<_>>() == expected
    })
    .await;

    // A scale-up adds the next slot.
    docker(&[
        "service",
        "scale",
        "--detach",
        &format!("{}=4", host.service),
    ])
    .await;
    let four = slots(4);
    until(&mut stream, &mut members, |m| {
        m.keys().cloned().collect::<Vec<_>>() == four
    })
    .await;
}

/// A Swarm service whose port label does not parse is left out and counted, never given a
/// default port.
#[tokio::test]
async fn a_swarm_service_with_a_bad_port_label_is_left_out_and_counted() {
    let Some(host) = SwarmHost::start().await else {
        return;
    };
    host.deploy_labelled(1, "wscluster.port=71OO").await;
    let metrics = discovery::DiscoveryMetrics::default();
    let stream = SwarmSource::new(host.label.as_str())
        .resync(Duration::from_millis(200))
        .metrics(metrics.clone());
    let mut changes = stream.discover();
    let invalid = || {
        metrics.errors(
            discovery::Source::swarm,
            discovery::ErrorKind::invalid_entry,
        )
    };
    let counted = wscluster_testkit::eventually(Duration::from_secs(60), async || invalid() >= 1);
    assert!(counted.await, "the bad label counted");
    // Its task runs meanwhile; it never becomes a member.
    let running = wscluster_testkit::eventually(Duration::from_secs(60), async || {
        docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            &host.service,
        ])
        .await
        .lines()
        .count()
            == 1
    });
    assert!(running.await);
    let joined = tokio::time::timeout(Duration::from_secs(3), changes.next()).await;
    assert!(joined.is_err(), "a member joined: {joined:?}");
}

/// `docker/stack.yaml` deployed as a stack of its own; removed (and its network) when dropped.
struct Stack {
    name: String,
    token: String,
    /// Each gateway's public and admin addresses.
    gateways: Vec<(SocketAddr, SocketAddr)>,
    _swarm: Swarm,
}

impl Stack {
    async fn deploy() -> Option<Self> {
        let swarm = Swarm::join(&["wscluster-backend", "wscluster-gateway"]).await?;
        let name = format!("wst{}", std::process::id());
        let token = format!("stack-test-token-{}", fastrand::u64(..));
        let mut env = vec![
            ("WSCLUSTER_ADMIN_TOKEN".to_owned(), token.clone()),
            (
                "WSCLUSTER_MIGRATION_SECRET".to_owned(),
                format!("stack-test-secret-{}", fastrand::u64(..)),
            ),
        ];
        let mut gateways = Vec::new();
        for n in 1..=3 {
            let (public, admin) = (
                wscluster_testkit::free_port(),
                wscluster_testkit::free_port(),
            );
            env.push((format!("WSCLUSTER_GATEWAY_{n}"), public.to_string()));
            env.push((format!("WSCLUSTER_GATEWAY_{n}_ADMIN"), admin.to_string()));
            gateways.push((
                SocketAddr::from(([127, 0, 0, 1], public)),
                SocketAddr::from(([127, 0, 0, 1], admin)),
            ));
        }
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/stack.yaml");
        let output = Command::new("docker")
            .args([
                "stack",
                "deploy",
                "--resolve-image",
                "never",
                "-c",
                file,
                &name,
            ])
            .envs(env)
            .output()
            .await
            .expect("docker runs");
        assert!(
            output.status.success(),
            "stack deploy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(Self {
            name,
            token,
            gateways,
            _swarm: swarm,
        })
    }

    /// The member id of backend slot `slot`.
    fn backend(&self, slot: u32) -> String {
        format!("{}_backend.{slot}", self.name)
    }

    /// An admin request to gateway `n` (0-based); the status and the body.
    async fn admin(&self, n: usize, method: &str, path: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.token,
            body.len()
        );
        // Until its container runs, a gateway's port refuses or resets: (0, "").
        let exchange = async {
            let mut tcp = TcpStream::connect(self.gateways[n].1).await?;
            tcp.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            tcp.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(20), exchange).await {
            Ok(Ok(response)) if response.len() > 12 => {
                let status = response[9..12].parse().unwrap_or(0);
                let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                (status, body.to_owned())
            }
            _ => (0, String::new()),
        }
    }

    /// Gateway `n`'s `/admin/ring`, once it answers.
    async fn ring(&self, n: usize) -> Option<Value> {
        let (status, body) = self.admin(n, "GET", "/admin/ring", "").await;
        (status == 200).then(|| serde_json::from_str(&body).expect("JSON"))
    }

    /// The owners gateway `n` gives `keys`, and its ring digest.
    async fn owners(&self, n: usize, keys: &[String]) -> (String, Vec<String>) {
        let body = serde_json::json!({ "keys": keys }).to_string();
        let (status, answer) = self.admin(n, "POST", "/admin/route", &body).await;
        assert_eq!(status, 200, "{answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        let owners = answer["owners"].as_array().unwrap();
        let owners = owners
            .iter()
            .map(|o| o.as_str().unwrap_or("").to_owned())
            .collect();
        (answer["digest"].as_str().unwrap().to_owned(), owners)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["stack", "rm", &self.name])
            .output();
        wait_containers_gone(&format!("label=com.docker.stack.namespace={}", self.name));
        // The stack's overlay goes once its last endpoint has; the swarm may be left after.
        for _ in 0..100 {
            let left = std::process::Command::new("docker")
                .args([
                    "network",
                    "ls",
                    "-q",
                    "--filter",
                    &format!("label=com.docker.stack.namespace={}", self.name),
                ])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A user connected through one gateway, and the backend it is on now.
struct User {
    key: String,
    gateway: usize,
    client: Client,
    on: String,
    /// How often its connection closed and it connected again.
    reconnects: u32,
}

impl User {
    async fn connect(stack: &Stack, gateway: usize, key: &str) -> Self {
        let url = format!("ws://{}/connect/{key}", stack.gateways[gateway].0);
        let (mut client, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .expect("a handshake within 10 s")
        .expect("the gateway upgrades");
        let hello = next_json(&mut client).await.expect("connected");
        assert_eq!(hello["type"], "connected");
        let on = hello["server"].as_str().unwrap().to_owned();
        Self {
            key: key.to_owned(),
            gateway,
            client,
            on,
            reconnects: 0,
        }
    }

    /// Sends a message; the backend that echoed it, after following any live move. A
    /// closed connection (its backend was killed) reconnects through the same gateway.
    async fn echo(&mut self, stack: &Stack) -> String {
        if self.client.send(Message::text("where am i")).await.is_ok() {
            while let Some(message) = next_json(&mut self.client).await {
                match message["type"].as_str() {
                    Some("connected") => {
                        assert_eq!(message["migratedFrom"].as_str(), Some(self.on.as_str()));
                        self.on = message["server"].as_str().unwrap().to_owned();
                    }
                    Some("echo") => {
                        assert_eq!(message["server"].as_str(), Some(self.on.as_str()));
                        return self.on.clone();
                    }
                    _ => {}
                }
            }
        }
        let reconnects = self.reconnects + 1;
        *self = User::connect(stack, self.gateway, &self.key.clone()).await;
        self.reconnects = reconnects;
        Box::pin(self.echo(stack)).await
    }
}

/// The next JSON message; `None` once the connection closed.
async fn next_json(client: &mut Client) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), client.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return None,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Polls every gateway until `done` holds for each one's `/admin/ring`; when each first did.
async fn until_every_gateway(
    stack: &Stack,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<tokio::time::Instant> {
    let deadline = tokio::time::Instant::now() + within;
    let mut when = vec![None; stack.gateways.len()];
    while when.iter().any(Option::is_none) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateways {:?} not there within {within:?}",
            when.iter()
                .enumerate()
                .filter(|(_, w)| w.is_none())
                .map(|(n, _)| n + 1)
                .collect::<Vec<_>>()
        );
        for (n, seen) in when.iter_mut().enumerate() {
            if seen.is_none() && stack.ring(n).await.is_some_and(|ring| done(&ring)) {
                *seen = Some(tokio::time::Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    when.into_iter().map(Option::unwrap).collect()
}

fn member_ids(ring: &Value) -> Vec<String> {
    ring["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every gateway has one digest and the same owner for every one of `keys`, and each of
/// `three` owns a fair share of them; returns the owners.
async fn assert_every_gateway_routes_keys_alike(
    stack: &Stack,
    keys: &[String],
    three: &[String],
) -> Vec<String> {
    let (digest, owners) = stack.owners(0, keys).await;
    for n in 1..3 {
        let (other_digest, other_owners) = stack.owners(n, keys).await;
        assert_eq!(other_digest, digest, "gateway {} digest", n + 1);
        let differing = owners
            .iter()
            .zip(&other_owners)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differing, 0, "keys routed differently by gateway {}", n + 1);
    }
    for backend in three {
        let share = owners.iter().filter(|o| *o == backend).count();
        assert!(share > 20_000, "{backend} owns {share} of 100,000");
    }
    owners
}

/// `[cluster]`: each gateway finds the three gateway services' tasks through the Swarm API
/// and shows them all, itself among them, on `node`, with one digest.
async fn every_gateway_sees_three_agreeing_replicas(stack: &Stack, node: &str) {
    for n in 0..3 {
        let view = async || {
            let (_, body) = stack.admin(n, "GET", "/admin/cluster", "").await;
            serde_json::from_str::<Value>(&body).unwrap_or_default()
        };
        let agreeing = wscluster_testkit::eventually(Duration::from_secs(30), async || {
            let view = view().await;
            let replicas = view["replicas"].as_array().cloned().unwrap_or_default();
            view["agree"] == true
                && replicas.len() == 3
                && replicas
                    .iter()
                    .all(|r| r["agrees"] == true && r["node"] == node)
                && replicas.iter().filter(|r| r["own"] == true).count() == 1
        });
        if !agreeing.await {
            panic!("gateway {}'s replicas: {:#}", n + 1, view().await);
        }
    }
}

/// Clients through every gateway land on their key's owner: the users of the first 60
/// `keys`, connected in turn through each gateway.
async fn users_on_their_owners(stack: &Stack, keys: &[String], owners: &[String]) -> Vec<User> {
    let mut users = Vec::new();
    for (u, (key, owner)) in keys.iter().zip(owners).take(60).enumerate() {
        let user = User::connect(stack, u % 3, key).await;
        assert_eq!(&user.on, owner, "{key} through gateway {}", u % 3 + 1);
        users.push(user);
    }
    users
}

/// The scale-up phase; returns the 4 members after it.
async fn scale_up_through_the_admin_api(
    stack: &Stack,
    keys: &[String],
    users: &mut [User],
) -> Vec<String> {
    // Scale up through one gateway's admin API: every gateway converges within 2 s of the
    // first, and no connection is left off its owner on any of them.
    let (status, body) = stack.admin(1, "POST", "/admin/backends", "").await;
    assert_eq!(status, 201, "{body}");
    let joining: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        joining["id"],
        stack.backend(4).as_str(),
        "the new slot's member id"
    );
    let four: Vec<String> = (1..=4).map(|s| stack.backend(s)).collect();
    let seen = until_every_gateway(stack, Duration::from_secs(60), |ring| {
        member_ids(ring) == four
    })
    .await;
    let spread = *seen.iter().max().unwrap() - *seen.iter().min().unwrap();
    assert!(
        spread <= Duration::from_secs(2),
        "converged {spread:?} apart"
    );
    until_every_gateway(stack, Duration::from_secs(20), |ring| {
        ring["off_owner"] == 0 && ring["migrations"]["in_flight"] == 0
    })
    .await;
    let (_, owners) = stack.owners(2, keys).await;
    let mut moved = 0;
    for (u, user) in users.iter_mut().enumerate() {
        let before = user.on.clone();
        assert_eq!(
            user.echo(stack).await,
            owners[u],
            "{} after the scale-up",
            user.key
        );
        moved += usize::from(before != user.on);
    }
    assert!(moved > 0, "some of the 60 users belong to the new backend");
    eprintln!("scale-up: gateways converged {spread:?} apart; {moved} of 60 users moved");
    four
}

/// The phase where a backend task is killed.
async fn kill_a_backend_task(stack: &Stack, keys: &[String], users: &mut [User], four: &[String]) {
    // A backend task is killed: its users end on their new owners (Swarm's replacement
    // takes back the slot, so the owners are read again once every gateway has 4 members).
    let victim = stack.backend(2);
    let on_victim = users.iter().filter(|u| u.on == victim).count();
    assert!(on_victim > 0, "users on {victim}");
    let container = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={}_backend", stack.name),
        "--filter",
        &format!("label=com.docker.swarm.task.name={}", {
            let name = docker(&[
                "ps",
                "--format",
                "{{.Label \"com.docker.swarm.task.name\"}}",
                "--filter",
                &format!("label=com.docker.swarm.service.name={}_backend", stack.name),
            ])
            .await;
            name.lines()
                .find(|task| task.starts_with(&format!("{victim}.")))
                .expect("slot 2's task")
                .to_owned()
        }),
    ])
    .await;
    docker(&["kill", &container]).await;
    until_every_gateway(stack, Duration::from_secs(30), |ring| {
        !member_ids(ring).contains(&victim)
            || ring["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == victim.as_str() && m["connections"] == 0)
    })
    .await;
    until_every_gateway(stack, Duration::from_secs(60), |ring| {
        member_ids(ring) == four && ring["off_owner"] == 0
    })
    .await;
    let (_, owners) = stack.owners(0, keys).await;
    for (u, user) in users.iter_mut().enumerate() {
        assert_eq!(
            user.echo(stack).await,
            owners[u],
            "{} after the kill",
            user.key
        );
    }
    eprintln!("kill: {on_victim} users of {victim} on their owners again");
}

/// The scale-down phase.
async fn scale_down_through_the_admin_api(
    stack: &Stack,
    keys: &[String],
    users: &mut [User],
    four: &[String],
) {
    // Scale down through the admin API: Swarm picks the task, every gateway drops it at once,
    // and its users move live (no reconnect) while it drains, before it stops.
    let reconnects: Vec<u32> = users.iter().map(|u| u.reconnects).collect();
    let (status, body) = stack.admin(2, "DELETE", "/admin/backends", "").await;
    assert_eq!(status, 200, "{body}");
    let seen = until_every_gateway(stack, Duration::from_secs(30), |ring| {
        member_ids(ring).len() == 3
    })
    .await;
    let spread = *seen.iter().max().unwrap() - *seen.iter().min().unwrap();
    let left = stack
        .ring(0)
        .await
        .map(|r| member_ids(&r))
        .unwrap_or_default();
    let removed = four.iter().find(|id| !left.contains(id)).unwrap().clone();
    let on_removed = users.iter().filter(|u| u.on == removed).count();
    until_every_gateway(stack, Duration::from_secs(20), |ring| {
        ring["off_owner"] == 0 && ring["migrations"]["in_flight"] == 0
    })
    .await;
    let (_, owners) = stack.owners(1, keys).await;
    for (u, user) in users.iter_mut().enumerate() {
        assert_eq!(
            user.echo(stack).await,
            owners[u],
            "{} after the scale-down",
            user.key
        );
    }
    let after: Vec<u32> = users.iter().map(|u| u.reconnects).collect();
    assert_eq!(
        after, reconnects,
        "a user had to reconnect on the scale-down"
    );
    eprintln!(
        "scale-down: {removed} left every gateway {spread:?} apart; its {on_removed} users moved live"
    );
}

/// The stack file on a real single-node swarm: 3 gateways agree without a leader, route
/// 100,000 keys identically, put clients on their owners through any gateway, converge
/// together on a scale-up through the admin API, move a killed task's users, and drain a
/// scaled-down task's users live.
#[tokio::test]
async fn three_gateways_on_swarm_agree_on_every_key() {
    let Some(stack) = Stack::deploy().await else {
        return;
    };
    let three: Vec<String> = (1..=3).map(|s| stack.backend(s)).collect();
    until_every_gateway(&stack, Duration::from_secs(120), |ring| {
        member_ids(ring) == three
    })
    .await;
    // Each member names the node its task runs on.
    let node = docker(&["info", "--format", "{{.Name}}"]).await;
    let ring = stack.ring(0).await.expect("gateway 1's ring");
    for member in ring["members"].as_array().expect("members") {
        assert_eq!(member["node"].as_str(), Some(node.as_str()), "{member}");
    }

    // One digest, and the same owner for every one of 100,000 keys.
    let keys: Vec<String> = (0..100_000).map(|u| format!("user-{u}")).collect();
    let owners = assert_every_gateway_routes_keys_alike(&stack, &keys, &three).await;
    every_gateway_sees_three_agreeing_replicas(&stack, &node).await;
    let mut users = users_on_their_owners(&stack, &keys, &owners).await;
    let four = scale_up_through_the_admin_api(&stack, &keys, &mut users).await;
    kill_a_backend_task(&stack, &keys, &mut users, &four).await;
    scale_down_through_the_admin_api(&stack, &keys, &mut users, &four).await;
}
