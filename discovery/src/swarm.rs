//! Docker Swarm: the running tasks of labelled Swarm services are members, one per replica
//! slot. Only through the local engine socket; only services labelled with our service.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use bollard::{
    models::{HealthStatusEnum, TaskState},
    query_parameters::{EventsOptionsBuilder, ListServicesOptionsBuilder, ListTasksOptionsBuilder},
    Docker,
};
use futures_util::StreamExt;
use tower::discover::Change;
use tower_hashring::NodeId;

use crate::{
    backoff::{Backoff, Reconnect},
    changes::ChangeSender,
    docker::{connect, member_labels, DockerError, MEMBERSHIP_EVENTS, SERVICE_LABEL},
    Backend, DiscoveryMetrics, MemberChanges, MemberSet, Source,
};

/// Where the members of a service run on Docker Swarm: the running, healthy tasks of every
/// Swarm service labelled `wscluster.service=<service>`, each reached at its address on
/// `network` (or its first network other than the ingress) and the port in the Swarm
/// service's `wscluster.port` label.
///
/// A member's id is `<swarm service name>.<slot>`: stable per replica slot, so a task that
/// Swarm restarts or replaces takes back its place on the ring. Engine events trigger a new
/// listing, and a listing every `resync` (default 2 s) is the safety net. A task is reached
/// through the local engine (its container is inspected for its address), so this follows
/// the tasks of the node the gateway's engine is: all of them on a single-node swarm.
///
/// ```no_run
/// use discovery::SwarmSource;
///
/// let members = SwarmSource::new("chat").network("wscluster_backends").discover();
/// # let _ = members;
/// ```
#[derive(Clone, Debug)]
pub struct SwarmSource {
    service: String,
    network: Option<String>,
    resync: Duration,
    metrics: DiscoveryMetrics,
}

impl SwarmSource {
    /// The tasks of the Swarm services labelled `wscluster.service=<service>`.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            network: None,
            resync: Duration::from_secs(2),
            metrics: DiscoveryMetrics::default(),
        }
    }

    /// Reaches tasks on this network (an overlay of the stack, say).
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// Lists the tasks again this often even without an event (default 2 s).
    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every.max(Duration::from_millis(50));
        self
    }

    /// Counts the errors of [`discover`](Self::discover) into `metrics`.
    pub fn metrics(mut self, metrics: DiscoveryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The members, as they change.
    pub fn discover(&self) -> MemberChanges {
        let this = self.clone();
        MemberChanges::spawn(|changes| follow(this, changes))
    }

    /// Every member now: one per running, healthy task with an address.
    async fn list(&self, docker: &Docker) -> Result<Vec<Backend>, DockerError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{SERVICE_LABEL}={}", self.service)],
        )]);
        let services = docker
            .list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        let mut backends = Vec::new();
        for service in services {
            let (Some(service_id), Some(spec)) = (service.id, service.spec) else {
                continue;
            };
            let name = spec.name.unwrap_or_else(|| service_id.clone());
            let labels = spec.labels.unwrap_or_default();
            let Some((port, weight)) = member_labels(&labels, &name, &self.metrics, Source::swarm)
            else {
                continue;
            };
            let filters = HashMap::from([
                ("service".to_owned(), vec![service_id.clone()]),
                ("desired-state".to_owned(), vec!["running".to_owned()]),
            ]);
            let tasks = docker
                .list_tasks(Some(
                    ListTasksOptionsBuilder::default().filters(&filters).build(),
                ))
                .await?;
            for task in tasks {
                let status = task.status.as_ref();
                if status.and_then(|s| s.state) != Some(TaskState::RUNNING) {
                    continue;
                }
                let Some(slot) = task.slot else { continue };
                let container = status
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.container_id.clone());
                let Some(container) = container else { continue };
                if let Some(ip) = self.task_address(docker, &container).await {
                    let id = format!("{name}.{slot}");
                    backends.push(Backend::new(id, (ip, port).into()).weight(weight));
                }
            }
        }
        Ok(backends)
    }

    /// A task's address, if its container runs here, is healthy (where it has a check),
    /// and is on the network.
    async fn task_address(&self, docker: &Docker, container: &str) -> Option<IpAddr> {
        let container = docker.inspect_container(container, None).await.ok()?;
        let state = container.state.as_ref()?;
        let health = state.health.as_ref().and_then(|h| h.status);
        if state.running != Some(true)
            || matches!(
                health,
                Some(HealthStatusEnum::STARTING | HealthStatusEnum::UNHEALTHY)
            )
        {
            return None;
        }
        let networks = container.network_settings.as_ref()?.networks.as_ref()?;
        let endpoint = match &self.network {
            Some(network) => networks.get(network)?,
            None => networks
                .iter()
                .find(|(name, _)| name.as_str() != "ingress")
                .map(|(_, endpoint)| endpoint)?,
        };
        endpoint.ip_address.as_deref()?.parse().ok()
    }
}

async fn follow(source: SwarmSource, changes: ChangeSender) {
    let mut members = MemberSet::default();
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let lost = "swarm discovery lost the engine";
    let mut reconnect = Reconnect::new(backoff, lost, source.metrics.clone(), Source::swarm);
    loop {
        let started = tokio::time::Instant::now();
        match session(&source, &mut members, &changes).await {
            Ok(()) => return,
            Err(error) => reconnect.after(started, error).await,
        }
    }
}

/// One connected period: lists on every service or container event and every `resync`;
/// returns `Ok` only when nobody listens any more.
async fn session(
    source: &SwarmSource,
    members: &mut MemberSet,
    changes: &ChangeSender,
) -> Result<(), DockerError> {
    let docker = connect().await?;
    // Service changes, and the container events that can change a task's membership (not
    // the exec events of every health probe on the engine).
    let actions = ["create", "update", "remove"]
        .into_iter()
        .chain(MEMBERSHIP_EVENTS)
        .map(str::to_owned)
        .collect();
    let filters = HashMap::from([
        (
            "type".to_owned(),
            vec!["service".to_owned(), "container".to_owned()],
        ),
        ("event".to_owned(), actions),
    ]);
    let mut events = docker.events(Some(
        EventsOptionsBuilder::default().filters(&filters).build(),
    ));
    let mut resync = tokio::time::interval(source.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let listed = source.list(&docker).await?;
        let update: Vec<Change<NodeId, Backend>> = members.update(listed);
        if !update
            .into_iter()
            .all(|change| changes.send(change).is_ok())
        {
            return Ok(());
        }
        tokio::select! {
            event = events.next() => match event {
                Some(event) => { event?; }
                None => {
                    return Err(DockerError::Engine(bollard::errors::Error::IOError {
                        err: std::io::Error::other("the event stream ended"),
                    }))
                }
            },
            _ = resync.tick() => {}
            () = changes.closed() => return Ok(()),
        }
    }
}
