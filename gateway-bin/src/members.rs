//! The gateway's members: what the ring is built from. Static configuration, discovery
//! sources (Redis, health-checked lists) and the admin API all change them here, and every
//! change reaches the ring through one `Discover` stream.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tower::discover::Change;
use tower_hashring::NodeId;
use tower_ws_migrate::MigrationSecret;
use tower_ws_proxy::{Upstream, UpstreamConfig};

use crate::backend::Backend;

/// The changes the ring follows.
pub(crate) type RingChanges =
    Pin<Box<dyn Stream<Item = Result<Change<NodeId, Upstream>, Infallible>> + Send>>;

/// A backend the gateway routes to, as the admin API shows it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) address: SocketAddr,
    pub(crate) weight: u32,
    /// Set for backends the demo started in this process: stops them.
    pub(crate) stop: Option<Arc<tokio::sync::Notify>>,
}

impl Member {
    pub(crate) fn at(address: SocketAddr, weight: u32) -> Self {
        Self {
            address,
            weight,
            stop: None,
        }
    }
}

/// The members, shared by everything that changes them; cheap to clone.
#[derive(Clone)]
pub(crate) struct Members {
    changes: mpsc::UnboundedSender<Result<Change<NodeId, Upstream>, Infallible>>,
    members: Arc<Mutex<BTreeMap<NodeId, Member>>>,
    /// Members being drained on purpose: discovery may not bring them back meanwhile.
    leaving: Arc<Mutex<std::collections::BTreeSet<NodeId>>>,
    upstream: UpstreamConfig,
    /// The demo's in-process backends check live moves with the gateway's secret.
    secret: Option<MigrationSecret>,
}

impl Members {
    /// No members yet, and the stream of changes the ring is to follow.
    pub(crate) fn new(
        upstream: UpstreamConfig,
        secret: Option<MigrationSecret>,
    ) -> (Self, RingChanges) {
        let (changes, receiver) = mpsc::unbounded_channel();
        let members = Self {
            changes,
            members: Arc::default(),
            leaving: Arc::default(),
            upstream,
            secret,
        };
        (members, Box::pin(ChannelDiscovery(receiver)))
    }

    /// Adds or updates a member.
    pub(crate) fn insert(&self, id: NodeId, member: Member) {
        let upstream = Upstream::new(member.address.to_string(), self.upstream);
        self.lock().insert(id.clone(), member);
        let _ = self.changes.send(Ok(Change::Insert(id, upstream)));
    }

    /// Removes a member; `None` if it was not one.
    pub(crate) fn remove(&self, id: &NodeId) -> Option<Member> {
        let member = self.lock().remove(id)?;
        let _ = self.changes.send(Ok(Change::Remove(id.clone())));
        Some(member)
    }

    /// Takes `id` off the ring and keeps discovery from bringing it back until
    /// [`returned`](Self::returned) (a drain before its container stops).
    pub(crate) fn leave(&self, id: &NodeId) -> Option<Member> {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        self.remove(id)
    }

    /// Lets discovery announce `id` again.
    pub(crate) fn returned(&self, id: &NodeId) {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn is_leaving(&self, id: &NodeId) -> bool {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// A member's weight on the ring (1 for one that is not known).
    pub(crate) fn weight(&self, id: &NodeId) -> u32 {
        self.lock().get(id).map_or(1, |m| m.weight)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the changes of a discovery source, for as long as it runs.
    pub(crate) fn follow<S>(&self, source: S)
    where
        S: Stream<Item = Result<Change<NodeId, discovery::Backend>, Infallible>> + Send + 'static,
    {
        let members = self.clone();
        tokio::spawn(async move {
            let mut source = std::pin::pin!(source);
            while let Some(Ok(change)) = source.next().await {
                match change {
                    Change::Insert(id, _) if members.is_leaving(&id) => {}
                    Change::Insert(id, backend) => {
                        tracing::info!(backend = %id, address = %backend.address, "discovered");
                        members.insert(id, Member::at(backend.address, backend.weight));
                    }
                    Change::Remove(id) => {
                        tracing::info!(backend = %id, "gone");
                        members.remove(&id);
                    }
                }
            }
        });
    }

    /// Starts a reference backend in this process (the demo) and adds it.
    pub(crate) async fn start_demo_backend(&self, id: String) -> std::io::Result<NodeId> {
        let listener = Backend::listen(([127, 0, 0, 1], 0).into())?;
        let address = listener.local_addr()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let backend = match &self.secret {
            Some(secret) => Backend::new(id.clone()).with_secret(secret.clone()),
            None => Backend::new(id.clone()),
        };
        tokio::spawn(backend.serve(listener, async move { stopped.notified().await }));
        let id = NodeId::from(id);
        let member = Member {
            stop: Some(stop),
            ..Member::at(address, 1)
        };
        self.insert(id.clone(), member);
        tracing::info!(backend = %id, %address, "started in-process backend");
        Ok(id)
    }
}

struct ChannelDiscovery(mpsc::UnboundedReceiver<Result<Change<NodeId, Upstream>, Infallible>>);

impl Stream for ChannelDiscovery {
    type Item = Result<Change<NodeId, Upstream>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
