//! The multi-node Docker Swarm of `tests/multinode/swarm.sh` for a test: built once (`up`,
//! `deploy`), read through `swarm.sh env`, and torn down (`down`) when dropped, also when
//! the test panics.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};

/// `up` and `deploy` each wait at most 2 minutes per step inside the script; this bounds the
/// whole command, should one of them hang anyway.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

/// A 3-node Swarm of network namespaces on this machine, one gateway per node, HAProxy in
/// front. Only one exists at a time on a machine (the script refuses a second).
///
/// ```no_run
/// # async fn f() {
/// let Some(swarm) = wscluster_testkit::MultinodeSwarm::start().await else { return };
/// let ring = swarm.ring(1).await.expect("node 1's gateway answers");
/// # }
/// ```
#[derive(Debug)]
pub struct MultinodeSwarm {
    env: HashMap<String, String>,
    /// Node n's admin API is `admins[n - 1]`.
    admins: Vec<SocketAddr>,
    /// HAProxy's port for node n's gateway alone is `alone[n - 1]`.
    alone: Vec<SocketAddr>,
    balancer: SocketAddr,
    token: String,
    _teardown: Teardown,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/multinode/swarm.sh")
}

/// What the harness needs that this machine lacks, if anything.
async fn missing_prerequisite() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().await.ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces, dockerd)".into());
    }
    for program in ["dockerd", "haproxy", "nsenter", "jq", "curl"] {
        if !crate::installed(program) {
            return Some(format!("{program} is not installed"));
        }
    }
    // An image comes from the machine's engine unless a static binary is given for it.
    for (image, binary) in [
        ("wscluster-backend", "WSCLUSTER_MULTINODE_BACKEND_BIN"),
        ("wscluster-gateway", "WSCLUSTER_MULTINODE_GATEWAY_BIN"),
    ] {
        if std::env::var_os(binary).is_some() {
            continue;
        }
        let found = Command::new("docker")
            .args(["image", "inspect", image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !found.is_ok_and(|s| s.success()) {
            return Some(format!(
                "no {image} image (docker/build-images.sh) and no {binary}"
            ));
        }
    }
    None
}

/// Runs `swarm.sh args…`, bounded; its stdout, or a panic with its stderr.
async fn run_script(args: &[&str]) -> String {
    let run = Command::new("bash")
        .arg(script())
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("swarm.sh {args:?} still running after {SCRIPT_DEADLINE:?}"))
        .expect("bash runs");
    assert!(
        output.status.success(),
        "swarm.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `export NAME=value` and `export NAME="a b"` lines, as `swarm.sh env` prints them.
fn parse_exports(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.trim_matches('"').to_owned()))
        .collect()
}

fn addresses(env: &HashMap<String, String>, name: &str) -> Vec<SocketAddr> {
    env.get(name)
        .unwrap_or_else(|| panic!("swarm.sh env prints no {name}"))
        .split_whitespace()
        .map(|a| a.parse().expect("an address"))
        .collect()
}

/// Runs `swarm.sh down` when dropped: whatever happened, the machine is left as it was.
#[derive(Debug)]
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        // A node left cut off by a failed test would make its `swarm leave` wait 30 s.
        for node in 1..=9 {
            let _ = std::process::Command::new("ip")
                .args([
                    "-n",
                    "wsmn-switch",
                    "link",
                    "set",
                    &format!("wsmn-p{node}"),
                    "up",
                ])
                .stderr(Stdio::null())
                .status();
        }
        let down = std::process::Command::new("bash")
            .arg(script())
            .arg("down")
            .stdout(Stdio::null())
            .status();
        if !down.is_ok_and(|s| s.success()) {
            eprintln!("swarm.sh down failed: run it by hand");
        }
    }
}

impl MultinodeSwarm {
    /// Builds the swarm and deploys the stack; `None` (skip) where this machine cannot run it
    /// (not root, no dockerd, haproxy, nsenter, jq or curl, no images), unless `CI` is set:
    /// there that fails the test.
    pub async fn start() -> Option<Self> {
        if let Some(missing) = missing_prerequisite().await {
            assert!(
                std::env::var_os("CI").is_none(),
                "the multi-node swarm cannot run: {missing}"
            );
            crate::skipped(&format!("multi-node swarm: {missing}"));
            return None;
        }
        // Before `up`, so a failure anywhere from here tears down what was built.
        let teardown = Teardown;
        run_script(&["up", "3"]).await;
        run_script(&["deploy"]).await;
        let env = parse_exports(&run_script(&["env"]).await);
        let balancer = env
            .get("WSCLUSTER_MULTINODE_BALANCER")
            .expect("HAProxy in front (haproxy installed)")
            .parse()
            .expect("an address");
        let swarm = Self {
            admins: addresses(&env, "WSCLUSTER_MULTINODE_ADMINS"),
            alone: addresses(&env, "WSCLUSTER_MULTINODE_BALANCER_GATEWAYS"),
            balancer,
            token: env["WSCLUSTER_ADMIN_TOKEN"].clone(),
            env,
            _teardown: teardown,
        };
        Some(swarm)
    }

    /// How many nodes (and gateways) there are.
    pub fn nodes(&self) -> usize {
        self.admins.len()
    }

    /// HAProxy's address in front of every gateway.
    pub fn balancer(&self) -> SocketAddr {
        self.balancer
    }

    /// HAProxy's address for node `node`'s gateway alone (1-based).
    pub fn gateway_alone(&self, node: usize) -> SocketAddr {
        self.alone[node - 1]
    }

    /// The stack's name (service names are `<stack>_gateway`, `<stack>_backend`).
    pub fn stack(&self) -> &str {
        &self.env["WSCLUSTER_MULTINODE_STACK"]
    }

    /// An admin request to node `node`'s gateway: the status and the body; `(0, "")` when it
    /// does not answer within 10 s (a node cut off, a gateway restarting).
    pub async fn admin(&self, node: usize, method: &str, path: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.token,
            body.len()
        );
        let exchange = async {
            let mut tcp = TcpStream::connect(self.admins[node - 1]).await?;
            tcp.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            tcp.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(Ok(response)) if response.len() > 12 => {
                let status = response[9..12].parse().unwrap_or(0);
                let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                (status, body.to_owned())
            }
            _ => (0, String::new()),
        }
    }

    /// Node `node`'s gateway's `/admin/ring`, if it answers.
    pub async fn ring(&self, node: usize) -> Option<Value> {
        let (status, body) = self.admin(node, "GET", "/admin/ring", "").await;
        (status == 200).then(|| serde_json::from_str(&body).expect("the ring as JSON"))
    }

    /// `POST /admin/route` on node `node`'s gateway: its answer (owners, version, digest).
    pub async fn route(&self, node: usize, keys: &[String]) -> Value {
        let body = serde_json::json!({ "keys": keys }).to_string();
        let (status, answer) = self.admin(node, "POST", "/admin/route", &body).await;
        assert_eq!(status, 200, "route on node {node}: {answer}");
        serde_json::from_str(&answer).expect("the route as JSON")
    }

    /// HAProxy's log (`swarm.sh log`): each session's end with its termination state, each
    /// server going up or down, with timestamps.
    pub async fn balancer_log(&self) -> String {
        run_script(&["log"]).await
    }

    /// The docker CLI on node `node`'s engine (never the machine's): its stdout.
    pub async fn docker(&self, node: usize, args: &[&str]) -> String {
        let host = &self.env[&format!("WSNODE_{node}_DOCKER_HOST")];
        let run = Command::new("docker")
            .args(["-H", host])
            .args(args)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("docker {args:?} on node {node}: no answer in 60 s"))
            .expect("docker runs");
        assert!(
            output.status.success(),
            "docker {args:?} on node {node}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The docker CLI on node `node`'s engine: its stdout and stderr together, whatever its
    /// exit status (for diagnostics: `service logs` writes the services' stderr to its own).
    pub async fn docker_output(&self, node: usize, args: &[&str]) -> String {
        let host = &self.env[&format!("WSNODE_{node}_DOCKER_HOST")];
        let run = Command::new("docker")
            .args(["-H", host])
            .args(args)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(60), run).await {
            Ok(Ok(output)) => format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Ok(Err(error)) => format!("docker {args:?} on node {node}: {error}"),
            Err(_) => format!("docker {args:?} on node {node}: no answer in 60 s"),
        }
    }

    /// Cuts node `node` off the others and from the machine (its switch port down), or
    /// plugs it back: the way a node fails, with no reset sent to anyone.
    pub async fn set_node_link(&self, node: usize, up: bool) {
        let port = format!("wsmn-p{node}");
        let state = if up { "up" } else { "down" };
        let status = Command::new("ip")
            .args(["-n", "wsmn-switch", "link", "set", &port, state])
            .status()
            .await
            .expect("ip runs");
        assert!(status.success(), "ip link set {port} {state}");
    }
}
