//! The stream every task-fed source hands out.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_core::Stream;
use tokio::{sync::mpsc, task::JoinHandle};
use tower::discover::Change;
use tower_hashring::NodeId;

use crate::Backend;

/// The member changes of a source that runs as a background task (Redis, Docker, RabbitMQ,
/// health checks), as a `Discover` stream. It never fails and never ends: while its source
/// is unreachable it yields nothing, so the ring stays as it was. Dropping it stops the task.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use discovery::{Backend, HealthCheck, MemberChanges, StaticDiscovery};
///
/// let members: MemberChanges = HealthCheck::tcp().wrap(StaticDiscovery::new([
///     Backend::new("backend-a", "127.0.0.1:7100".parse().unwrap()),
/// ]));
/// drop(members); // stops checking
/// # }
/// ```
#[derive(Debug)]
pub struct MemberChanges {
    changes: mpsc::UnboundedReceiver<Change<NodeId, Backend>>,
    task: JoinHandle<()>,
}

/// Where a source's task sends its changes.
pub(crate) type ChangeSender = mpsc::UnboundedSender<Change<NodeId, Backend>>;

impl MemberChanges {
    /// Spawns `source`, which sends its changes until the stream is dropped.
    pub(crate) fn spawn<F, Fut>(source: F) -> Self
    where
        F: FnOnce(ChangeSender) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, changes) = mpsc::unbounded_channel();
        let task = tokio::spawn(source(sender));
        Self { changes, task }
    }
}

impl Drop for MemberChanges {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for MemberChanges {
    type Item = Result<Change<NodeId, Backend>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx).map(|change| change.map(Ok))
    }
}
