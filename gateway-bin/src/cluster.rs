//! The gateway's replicas and whether they agree (`[cluster]`). Every `interval` this gateway
//! asks each replica's admin API what it routes by (`GET /admin/replica`: ring version,
//! digest, connections), marks the replicas whose digest is not the majority's, and counts
//! the seconds the reachable replicas disagreed. Replicas come from a static list and from
//! the gateway's own Swarm service, found the way backends are.

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, Hasher},
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use discovery::{SwarmSource, GATEWAY_LABEL};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};
use serde::{Deserialize, Serialize};
use tower::discover::Change;
use tower_ws_proxy::server::handover::Received;

use crate::{admin::AdminState, config::ClusterConfig};

/// A label after the version, left blank by a build: the upgrade test writes one into a
/// copy of the binary to have a second build that says it is one.
static BUILD_LABEL: [u8; 24] = *b"wscluster-build:        ";

/// The version this binary reports: the crate's, and its build label if it has one.
pub(crate) fn build() -> String {
    let label = std::hint::black_box(&BUILD_LABEL);
    match std::str::from_utf8(&label[16..]).map(str::trim) {
        Ok(label) if !label.is_empty() => format!("{}+{label}", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Where a replica says what it routes by.
pub(crate) const REPLICA_PATH: &str = "/admin/replica";
/// The most a replica's answer may hold.
const MAX_ANSWER: usize = 64 << 10;

/// What one replica says of itself: `GET /admin/replica`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ReplicaReport {
    /// Random per process: how a gateway recognises itself among its replicas.
    pub(crate) instance: String,
    /// The gateway's version.
    pub(crate) build: String,
    /// The process (which changes on an in-place upgrade, SIGUSR2).
    #[serde(default)]
    pub(crate) pid: u32,
    /// When the process started (Unix milliseconds).
    pub(crate) started_ms: u64,
    /// Its ring's version (a count of changes: replicas may differ and still agree).
    pub(crate) version: u64,
    /// Its ring's digest: replicas with the same digest route every key alike.
    pub(crate) digest: String,
    /// Members on its ring.
    pub(crate) members: usize,
    /// Its live WebSockets.
    pub(crate) connections: usize,
    /// What the process before it handed over, if an upgrade started it.
    #[serde(default)]
    pub(crate) handover: Option<Received>,
}

impl ReplicaReport {
    /// This gateway's own report.
    pub(crate) fn of(state: &AdminState) -> Self {
        let snapshot = state.ring.snapshot();
        let ring = snapshot.ring();
        Self {
            instance: state.cluster.identity.instance.clone(),
            build: build(),
            pid: std::process::id(),
            started_ms: state.cluster.identity.started_ms,
            version: snapshot.version(),
            digest: crate::digest::ring_digest(ring, &state.members.members()),
            members: ring.nodes().len(),
            connections: state.connections.len(),
            handover: state.cluster.identity.handover.get().cloned(),
        }
    }
}

/// One replica as this gateway last saw it.
#[derive(Clone, Debug, Serialize)]
struct Replica {
    /// Its admin address (`None` for this gateway when no source lists it).
    address: Option<SocketAddr>,
    /// Where its source says it runs (a Swarm task's node).
    node: Option<String>,
    /// This gateway itself.
    own: bool,
    /// What it said; absent when it could not be asked.
    #[serde(flatten)]
    report: Option<ReplicaReport>,
    /// Why it could not be asked.
    error: Option<String>,
    /// Whether its digest is the majority's; `None` when it could not be asked.
    agrees: Option<bool>,
}

impl Replica {
    /// This gateway, where no source lists it.
    fn this_gateway(report: ReplicaReport, agrees: Option<bool>) -> Self {
        Self {
            address: None,
            node: None,
            own: true,
            report: Some(report),
            error: None,
            agrees,
        }
    }
}

/// A replica's admin address and where it runs, as its source says.
#[derive(Clone, Debug)]
struct Peer {
    address: SocketAddr,
    node: Option<String>,
}

/// The replicas as last asked, shared by the admin API, the dashboard and `/metrics`.
#[derive(Clone, Debug)]
pub(crate) struct ClusterView {
    config: Option<ClusterConfig>,
    identity: Arc<Identity>,
    latest: Arc<Mutex<Latest>>,
}

#[derive(Debug)]
struct Identity {
    instance: String,
    started_ms: u64,
    handover: OnceLock<Received>,
}

#[derive(Debug, Default)]
struct Latest {
    replicas: Vec<Replica>,
    agree: bool,
    disagreed: Duration,
    at_ms: u64,
}

impl ClusterView {
    /// The view of `[cluster]`; without it, this gateway alone.
    pub(crate) fn new(config: Option<ClusterConfig>) -> Self {
        // Random per process, without a dependency: std's hasher keys are random.
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u32(std::process::id());
        let identity = Identity {
            instance: format!("{:016x}", random.finish()),
            started_ms: unix_ms(),
            handover: OnceLock::new(),
        };
        let latest = Latest {
            agree: true,
            ..Latest::default()
        };
        Self {
            config,
            identity: Arc::new(identity),
            latest: Arc::new(Mutex::new(latest)),
        }
    }

    /// Records what the process before this one handed over (shown by `/admin/replica`).
    pub(crate) fn handed_over(&self, received: Received) {
        let _ = self.identity.handover.set(received);
    }

    /// Asks the replicas every `interval` while the admin API lives; nothing without
    /// `[cluster]`.
    pub(crate) fn follow(state: AdminState) {
        let Some(config) = state.cluster.config.clone() else {
            return;
        };
        let peers = Arc::new(Mutex::new(BTreeMap::new()));
        for (index, address) in config.peers.iter().enumerate() {
            let peer = Peer {
                address: *address,
                node: None,
            };
            lock(&peers).insert(format!("static.{index}"), peer);
        }
        if let Some(service) = &config.swarm {
            let mut source = SwarmSource::new(service.as_str()).label(GATEWAY_LABEL);
            if let Some(network) = &config.network {
                source = source.network(network.as_str());
            }
            tokio::spawn(follow_swarm(source, Arc::downgrade(&peers)));
        }
        tokio::spawn(async move {
            let mut every = tokio::time::interval(config.interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if Arc::strong_count(&state.cluster.latest) <= 1 {
                    return;
                }
                let listed: Vec<Peer> = lock(&peers).values().cloned().collect();
                let replicas = ask_all(&state, listed, config.interval).await;
                state.cluster.record(replicas, config.interval);
            }
        });
    }

    /// Takes one round of answers in.
    fn record(&self, mut replicas: Vec<Replica>, interval: Duration) {
        let agree = judge(&mut replicas);
        let mut latest = lock(&self.latest);
        if !agree {
            latest.disagreed += interval;
        }
        *latest = Latest {
            replicas,
            agree,
            disagreed: latest.disagreed,
            at_ms: unix_ms(),
        };
    }

    /// `GET /admin/cluster`: every replica with its ring version, digest and connections,
    /// whether it agrees with the majority, and the seconds they disagreed so far.
    pub(crate) fn json(&self, own: ReplicaReport) -> serde_json::Value {
        let latest = lock(&self.latest);
        let mut replicas = latest.replicas.clone();
        if !replicas.iter().any(|replica| replica.own) {
            // Before the first round, or without [cluster]: this gateway alone.
            replicas.push(Replica::this_gateway(own, Some(latest.agree)));
        }
        serde_json::json!({
            "configured": self.config.is_some(),
            "interval_ms": self.config.as_ref().map(|c| c.interval.as_millis() as u64),
            "at_ms": latest.at_ms,
            "agree": latest.agree,
            "disagreed_seconds": latest.disagreed.as_secs_f64(),
            "replicas": replicas,
        })
    }
}

/// Keeps `peers` at the gateway service's running tasks while the view lives.
async fn follow_swarm(source: SwarmSource, peers: std::sync::Weak<Mutex<BTreeMap<String, Peer>>>) {
    let mut changes = source.discover();
    while let Some(Ok(change)) = changes.next().await {
        let Some(peers) = peers.upgrade() else {
            return;
        };
        let mut peers = lock(&peers);
        match change {
            Change::Insert(id, task) => {
                let node = task.metadata.get("node").cloned();
                let peer = Peer {
                    address: task.address,
                    node,
                };
                peers.insert(format!("swarm.{id}"), peer);
            }
            Change::Remove(id) => {
                peers.remove(&format!("swarm.{id}"));
            }
        }
    }
}

/// Asks every peer at once, each for at most `limit`; this gateway is recognised by its
/// instance, and added when no peer is it.
async fn ask_all(state: &AdminState, peers: Vec<Peer>, limit: Duration) -> Vec<Replica> {
    let own = ReplicaReport::of(state);
    let token = state.access.token.as_ref().map(|token| token.bearer());
    let answers = peers.into_iter().map(|peer| async move {
        let answer = ask(peer.address, token, limit).await;
        (peer, answer)
    });
    let mut replicas: Vec<Replica> = futures_util::future::join_all(answers)
        .await
        .into_iter()
        .map(|(peer, answer)| {
            let own_instance = matches!(&answer, Ok(report) if report.instance == own.instance);
            let (report, error) = match answer {
                Ok(report) => (Some(report), None),
                Err(error) => (None, Some(error)),
            };
            Replica {
                address: Some(peer.address),
                node: peer.node,
                own: own_instance,
                report,
                error,
                agrees: None,
            }
        })
        .collect();
    if !replicas.iter().any(|replica| replica.own) {
        replicas.push(Replica::this_gateway(own, None));
    }
    replicas.sort_by_key(|replica| (replica.node.clone(), replica.address));
    replicas
}

/// One `GET /admin/replica`, within `limit`.
async fn ask(
    address: SocketAddr,
    token: Option<&str>,
    limit: Duration,
) -> Result<ReplicaReport, String> {
    let asked = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("cannot connect: {error}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|error| error.to_string())?;
        // Ends once the sender and the response are dropped, answered or timed out.
        tokio::spawn(connection);
        let mut request =
            http::Request::get(REPLICA_PATH).header(http::header::HOST, address.to_string());
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|error| error.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        if !status.is_success() {
            let hint = if status == http::StatusCode::UNAUTHORIZED {
                ": the replicas need the same admin token"
            } else {
                ""
            };
            return Err(format!("answered {status}{hint}"));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|error| format!("its answer: {error}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|error| format!("its answer: {error}"))
    };
    tokio::time::timeout(limit, asked)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// Marks every replica that answered as agreeing or not with the digest most of them hold (a
/// tie goes to this gateway's); whether they all hold the same.
fn judge(replicas: &mut [Replica]) -> bool {
    let mut counts: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for replica in replicas.iter() {
        if let Some(report) = &replica.report {
            let count = counts.entry(report.digest.clone()).or_default();
            count.0 += 1;
            count.1 |= replica.own;
        }
    }
    let majority = counts
        .iter()
        .max_by_key(|(_, (count, own))| (*count, *own))
        .map(|(digest, _)| digest.clone());
    for replica in replicas.iter_mut() {
        replica.agrees = replica
            .report
            .as_ref()
            .map(|report| Some(&report.digest) == majority.as_ref());
    }
    counts.len() <= 1
}

impl Collector for ClusterView {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let latest = lock(&self.latest);
        let seconds = ConstCounter::new(latest.disagreed.as_secs_f64());
        let metric = encoder.encode_descriptor(
            "cluster_disagreement_seconds",
            "Seconds during which the gateway replicas that answered did not all hold the same ring digest ([cluster])",
            None,
            seconds.metric_type(),
        )?;
        seconds.encode(metric)?;
        let mut family = encoder.encode_descriptor(
            "cluster_replicas",
            "Gateway replicas by what the last round found: agreeing (the majority's digest), disagreeing, unreachable",
            None,
            MetricType::Gauge,
        )?;
        for (state, agrees) in [
            ("agreeing", Some(true)),
            ("disagreeing", Some(false)),
            ("unreachable", None),
        ] {
            let count = latest
                .replicas
                .iter()
                .filter(|r| r.agrees == agrees)
                .count();
            let gauge = ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(digest: Option<&str>, own: bool) -> Replica {
        Replica {
            address: None,
            node: None,
            own,
            report: digest.map(|digest| ReplicaReport {
                instance: String::new(),
                build: String::new(),
                pid: 0,
                started_ms: 0,
                version: 1,
                digest: digest.to_owned(),
                members: 1,
                connections: 0,
                handover: None,
            }),
            error: digest.is_none().then(|| "down".to_owned()),
            agrees: None,
        }
    }

    fn verdicts(replicas: &[Replica]) -> Vec<Option<bool>> {
        replicas.iter().map(|replica| replica.agrees).collect()
    }

    #[test]
    fn the_replica_off_the_majority_digest_is_the_one_marked() {
        let mut replicas = [
            replica(Some("a"), true),
            replica(Some("b"), false),
            replica(Some("a"), false),
        ];
        assert!(!judge(&mut replicas));
        assert_eq!(verdicts(&replicas), [Some(true), Some(false), Some(true)]);
    }
}
