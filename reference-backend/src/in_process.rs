//! Reference backends in the caller's own process, started and stopped through a
//! [`Scaler`]: the demo's, and a quick set of backends for tests.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use discovery::{Ownership, ScaleError, ScaleFuture, ScaledMembers, Scaler};
use tokio::sync::{mpsc, Notify};
use tower::discover::Change;
use tower_hashring::NodeId;
use tower_ws_migrate::MigrationSecret;

use crate::ReferenceBackend;

/// Reference backends on loopback in this process, each announced to the gateway as it
/// starts and withdrawn as it stops.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use discovery::Scaler;
/// use reference_backend::InProcessBackends;
///
/// let backends = InProcessBackends::new(None);
/// let id = backends.start_named("backend-a").await?;
/// assert_eq!(id.as_str(), "backend-a");
/// assert!(backends.members().is_some()); // for the gateway, once
/// assert!(backends.members().is_none());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct InProcessBackends {
    secret: Option<MigrationSecret>,
    changes: mpsc::UnboundedSender<Change<NodeId, discovery::Backend>>,
    announced: Mutex<Option<mpsc::UnboundedReceiver<Change<NodeId, discovery::Backend>>>>,
    running: Mutex<BTreeMap<NodeId, Arc<Notify>>>,
}

impl InProcessBackends {
    /// None yet; their live moves are checked with `secret`, the gateway's.
    pub fn new(secret: Option<MigrationSecret>) -> Self {
        let (changes, announced) = mpsc::unbounded_channel();
        Self {
            secret,
            changes,
            announced: Mutex::new(Some(announced)),
            running: Mutex::default(),
        }
    }

    /// Starts a reference backend named `id` and announces it.
    pub async fn start_named(&self, id: &str) -> std::io::Result<NodeId> {
        let listener = ReferenceBackend::listen(([127, 0, 0, 1], 0).into())?;
        let address: SocketAddr = listener.local_addr()?;
        let backend = match &self.secret {
            Some(secret) => ReferenceBackend::new(id).with_secret(secret.clone()),
            None => ReferenceBackend::new(id),
        };
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        tokio::spawn(backend.serve(listener, async move { stopped.notified().await }));
        let node = NodeId::from(id);
        self.lock().insert(node.clone(), stop);
        let member = discovery::Backend::new(id, address);
        let _ = self.changes.send(Change::Insert(node.clone(), member));
        tracing::info!(backend = %node, %address, "started in-process backend");
        Ok(node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Arc<Notify>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Scaler for InProcessBackends {
    /// Names it `backend-N`, N the first number not taken.
    fn start_one(&self) -> ScaleFuture<'_, NodeId> {
        Box::pin(async move {
            let id = {
                let running = self.lock();
                (running.len()..)
                    .map(|n| format!("backend-{n}"))
                    .find(|id| !running.contains_key(id.as_str()))
                    .unwrap_or_default()
            };
            self.start_named(&id)
                .await
                .map_err(|error| ScaleError::Failed(format!("cannot start a backend: {error}")))
        })
    }

    fn ownership<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, Ownership> {
        let ours = self.lock().contains_key(id);
        Box::pin(std::future::ready(Ok(if ours {
            Ownership::Ours
        } else {
            Ownership::Unknown
        })))
    }

    fn stop<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, ()> {
        if let Some(stop) = self.lock().remove(id) {
            stop.notify_waiters();
            let _ = self.changes.send(Change::Remove(id.clone()));
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn members(&self) -> Option<ScaledMembers> {
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let stream = futures_util::stream::unfold(announced, |mut announced| async move {
            let change = announced.recv().await?;
            Some((Ok(change), announced))
        });
        Some(Box::pin(stream))
    }
}
