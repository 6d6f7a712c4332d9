//! Docker Swarm: the running tasks of labelled Swarm services are members, one per replica
//! slot, on every node of the swarm. Only services labelled with our service.

mod tasks;

use std::{collections::HashMap, time::Duration};

use bollard::{
    models::{Service, Task},
    query_parameters::{
        EventsOptionsBuilder, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
        UpdateServiceOptionsBuilder,
    },
    Docker,
};
use futures_util::StreamExt;
use tower::discover::Change;
use tower_hashring::NodeId;

use self::tasks::Engine;
use crate::{
    backoff::{Backoff, Reconnect},
    changes::ChangeSender,
    docker::{connect, events_since, member_labels, DockerError, MEMBERSHIP_EVENTS, SERVICE_LABEL},
    source_errors::SourceErrors,
    Backend, MemberChanges, MemberSet,
};
#[cfg(feature = "metrics")]
use crate::{DiscoveryMetrics, Source};

/// Where the members of a service run on Docker Swarm: the running, healthy tasks of every
/// Swarm service labelled `wscluster.service=<service>`, each reached at its address on
/// `network` (or its first network other than the ingress) and the port in the Swarm
/// service's `wscluster.port` label.
///
/// A member's id is `<swarm service name>.<slot>`: stable per replica slot, so a task that
/// Swarm restarts or replaces takes back its place on the ring (a global service's tasks
/// have no slot: `<swarm service name>.<node hostname>`). Engine events trigger a new
/// listing, and a listing every `resync` (default 2 s) is the safety net.
///
/// The tasks and their overlay addresses come from the Swarm API (each task's network
/// attachments), so the tasks of every node are members, wherever the gateway runs: on a
/// manager through its local socket, on a worker through a manager's API named by
/// `DOCKER_HOST` (`tcp://manager:2375`), as for the docker CLI. Each member's
/// `metadata["node"]` is the hostname of the node its task runs on. A task is a member while
/// Swarm reports it `running`, which for a task with a health check means healthy.
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
    label: &'static str,
    network: Option<String>,
    resync: Duration,
    errors: SourceErrors,
}

impl SwarmSource {
    /// The tasks of the Swarm services labelled `wscluster.service=<service>`.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            label: SERVICE_LABEL,
            network: None,
            resync: Duration::from_secs(2),
            errors: SourceErrors::default(),
        }
    }

    /// Follows the services labelled `<label>=<service>` instead of `wscluster.service`:
    /// [`GATEWAY_LABEL`](crate::GATEWAY_LABEL) finds a gateway service's own replicas, so
    /// gateways find each other the way they find backends (their `wscluster.port` label then
    /// names the admin port).
    ///
    /// ```no_run
    /// use discovery::{SwarmSource, GATEWAY_LABEL};
    ///
    /// let peers = SwarmSource::new("wscluster").label(GATEWAY_LABEL).discover();
    /// # let _ = peers;
    /// ```
    pub fn label(mut self, label: &'static str) -> Self {
        self.label = label;
        self
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
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: DiscoveryMetrics) -> Self {
        self.errors = SourceErrors::new(metrics, Source::swarm);
        self
    }

    /// The members, as they change.
    pub fn discover(&self) -> MemberChanges {
        let this = self.clone();
        MemberChanges::spawn(|changes| follow(this, changes))
    }

    /// Every member now: one per running (so healthy) task with an address, read from the
    /// Swarm API, so tasks on every node are members, with their node's hostname in
    /// `metadata["node"]`.
    async fn list(&self, docker: &Docker, engine: &Engine) -> Result<Vec<Backend>, DockerError> {
        let services = labelled_services(docker, self.label, &self.service).await?;
        let mut backends = Vec::new();
        let mut nodes = None;
        for service in services {
            let (Some(service_id), Some(spec)) = (service.id, service.spec) else {
                continue;
            };
            let name = spec.name.unwrap_or_else(|| service_id.clone());
            let labels = spec.labels.unwrap_or_default();
            let Some((port, weight)) = member_labels(&labels, &name, &self.errors) else {
                continue;
            };
            for task in engine.running_tasks(&service_id).await? {
                if !task.is_running() {
                    continue;
                }
                let Some(ip) = task.address(self.network.as_deref()) else {
                    continue;
                };
                if nodes.is_none() && task.node_id.is_some() {
                    // Listed once per listing, and only when a task is there to name.
                    // Names are a label: without them members still change.
                    nodes = Some(engine.node_names().await.unwrap_or_else(|error| {
                        tracing::warn!(%error, "swarm discovery cannot list the nodes");
                        HashMap::new()
                    }));
                }
                let node = task.node_id.as_ref().map(|node| {
                    let hostname = nodes.as_ref().and_then(|names| names.get(node));
                    hostname.unwrap_or(node).clone()
                });
                // A replicated task is known by its slot; a global one (a gateway on every
                // node) has none, and is known by its node.
                let instance = match (task.slot, &node) {
                    (Some(slot), _) => slot.to_string(),
                    (None, Some(node)) => node.clone(),
                    (None, None) => continue,
                };
                let mut backend = Backend::new(format!("{name}.{instance}"), (ip, port).into());
                if let Some(node) = node {
                    backend.metadata.insert("node".to_owned(), node);
                }
                backends.push(backend.weight(weight));
            }
        }
        Ok(backends)
    }
}

async fn follow(source: SwarmSource, changes: ChangeSender) {
    let mut members = MemberSet::default();
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let lost = "swarm discovery lost the engine";
    let mut reconnect = Reconnect::new(backoff, lost, source.errors.clone());
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
    // An engine it cannot speak to is named first, before bollard tries it.
    let engine = Engine::from_env()?;
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
        EventsOptionsBuilder::default()
            .filters(&filters)
            .since(&events_since())
            .build(),
    ));
    let mut resync = tokio::time::interval(source.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let listed = source.list(&docker, &engine).await?;
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

/// Scales the labelled Swarm service for `POST /admin/backends` (one more replica) and
/// `DELETE /admin/backends` (one fewer). It touches only the one Swarm service that carries
/// `wscluster.service=<service>`, and refuses when several do.
///
/// Swarm picks which task a scale-down stops, and moves it out of the `running` desired
/// state before it signals the task: every gateway's [`SwarmSource`] drops the member at
/// once and moves its users live while the backend, on SIGTERM, keeps serving for its drain
/// time (the reference backend's `--drain-ms`; give the service a `stop_grace_period` above
/// it). So the drain before the task stops is carried by the source to every gateway.
///
/// ```no_run
/// # async fn f() -> Result<(), discovery::DockerError> {
/// use discovery::SwarmScaler;
///
/// let scaler = SwarmScaler::new("wscluster").cap(8);
/// let joining = scaler.scale_up().await?; // "wscluster_backend.4", say
/// let replicas = scaler.scale_down().await?;
/// # let _ = (joining, replicas); Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SwarmScaler {
    label: String,
    cap: u64,
}

impl SwarmScaler {
    /// Scales the Swarm service labelled `wscluster.service=<service>` (at most 16 replicas
    /// unless [`cap`](Self::cap) says).
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            label: service.into(),
            cap: 16,
        }
    }

    /// The most replicas the service may run.
    pub fn cap(mut self, cap: u64) -> Self {
        self.cap = cap.max(1);
        self
    }

    /// One more replica; returns the member id its slot will have: Swarm gives a new task
    /// the lowest slot no running task holds.
    pub async fn scale_up(&self) -> Result<String, DockerError> {
        let (name, _, free_slot) = self.scale_by(1).await?;
        Ok(format!("{name}.{free_slot}"))
    }

    /// One fewer replica (never below 1); returns how many remain.
    pub async fn scale_down(&self) -> Result<u64, DockerError> {
        Ok(self.scale_by(-1).await?.1)
    }

    /// Scales by `step`; returns the service's name, its replicas now, and the lowest slot
    /// its running tasks left free before the change.
    async fn scale_by(&self, step: i64) -> Result<(String, u64, u64), DockerError> {
        let docker = connect().await?;
        let mut services = labelled_services(&docker, SERVICE_LABEL, &self.label).await?;
        let service = match services.len() {
            0 => return Err(DockerError::NoService(self.label.clone())),
            1 => services.remove(0),
            _ => {
                let names: Vec<String> = services
                    .iter()
                    .filter_map(|s| s.spec.as_ref()?.name.clone())
                    .collect();
                return Err(DockerError::SeveralServices(names.join(", ")));
            }
        };
        let (Some(mut spec), Some(version)) = (service.spec, service.version.and_then(|v| v.index))
        else {
            return Err(DockerError::NoService(self.label.clone()));
        };
        let name = spec.name.clone().unwrap_or_default();
        // Listed by label, but checked again: only ever ours.
        let labels = spec.labels.as_ref();
        if labels.and_then(|l| l.get(SERVICE_LABEL)) != Some(&self.label) {
            return Err(DockerError::ServiceNotOurs(name));
        }
        let Some(replicated) = spec.mode.as_mut().and_then(|m| m.replicated.as_mut()) else {
            return Err(DockerError::NoService(name));
        };
        let now = replicated.replicas.unwrap_or(1).max(0) as u64;
        let (wanted, bound) = if step > 0 {
            (now + 1, (now >= self.cap).then_some("cap"))
        } else {
            (now.saturating_sub(1), (now <= 1).then_some("floor"))
        };
        if let Some(bound) = bound {
            return Err(DockerError::AtBound {
                service: name,
                replicas: now,
                bound,
            });
        }
        replicated.replicas = Some(wanted as i64);
        let free_slot = if step > 0 {
            lowest_free_slot(&docker, service.id.as_deref().unwrap_or(&name)).await?
        } else {
            0
        };
        let options = UpdateServiceOptionsBuilder::default()
            .version(i32::try_from(version).unwrap_or(i32::MAX))
            .build();
        match docker.update_service(&name, spec, options, None).await {
            Ok(_) => {
                tracing::info!(service = %name, replicas = wanted, "scaled");
                Ok((name, wanted, free_slot))
            }
            // The version moved on: someone else (another gateway) scaled first.
            Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                if message.contains("out of sequence") =>
            {
                Err(DockerError::Concurrent(name))
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// The lowest replica slot that no task of `service` meant to run holds.
async fn lowest_free_slot(docker: &Docker, service: &str) -> Result<u64, DockerError> {
    let tasks = running_tasks(docker, service).await?;
    let taken: std::collections::BTreeSet<i64> = tasks.iter().filter_map(|t| t.slot).collect();
    Ok((1..).find(|slot| !taken.contains(slot)).unwrap_or(1) as u64)
}

/// The Swarm services labelled `<label>=<service>`.
async fn labelled_services(
    docker: &Docker,
    label: &str,
    service: &str,
) -> Result<Vec<Service>, DockerError> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={service}")])]);
    let options = ListServicesOptionsBuilder::default()
        .filters(&filters)
        .build();
    Ok(docker.list_services(Some(options)).await?)
}

/// The tasks of Swarm service `service` (name or id) that are meant to run.
async fn running_tasks(docker: &Docker, service: &str) -> Result<Vec<Task>, DockerError> {
    let filters = HashMap::from([
        ("service".to_owned(), vec![service.to_owned()]),
        ("desired-state".to_owned(), vec!["running".to_owned()]),
    ]);
    let options = ListTasksOptionsBuilder::default().filters(&filters).build();
    Ok(docker.list_tasks(Some(options)).await?)
}
