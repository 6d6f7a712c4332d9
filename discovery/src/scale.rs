//! Starting and stopping backends on request: a [`Scaler`] does it, an admin API only asks.
//! Two live here, beside the sources that see what they start: `DockerScaler` (containers
//! of one labelled service) and `SwarmScaler` (a Swarm service's replicas). The reference
//! backend crate has a third, for backends in the caller's own process.

use std::{convert::Infallible, future::Future, pin::Pin};

use futures_util::Stream;
use tower::discover::Change;
use tower_hashring::NodeId;

#[cfg(feature = "docker")]
use crate::{DockerError, DockerScaler, SwarmScaler};

/// A boxed future of a [`Scaler`].
pub type ScaleFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ScaleError>> + Send + 'a>>;

/// The members a scaler reports itself, for a scaler whose backends no discovery source sees.
pub type ScaledMembers =
    Pin<Box<dyn Stream<Item = Result<Change<NodeId, crate::Backend>, Infallible>> + Send>>;

/// Why a scaler did not do what it was asked; each has its own admin API status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScaleError {
    /// As many backends as allowed already run (409).
    #[error("{0}")]
    AtCap(String),
    /// Not now, or not this way (409): at the floor, a concurrent change, or a scaler that
    /// stops only named backends.
    #[error("{0}")]
    Conflict(String),
    /// The backend exists but is not the scaler's to stop (403).
    #[error("{0}")]
    NotOurs(String),
    /// The platform failed (502).
    #[error("{0}")]
    Failed(String),
}

/// Whether a backend is one a [`Scaler`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// It runs it: removing the member stops it.
    Ours,
    /// It exists on the platform but is someone else's (why): never touched.
    NotOurs(String),
    /// The scaler knows nothing of it (an external backend): removal only takes it off the
    /// ring.
    Unknown,
}

/// Starts and stops backends for `POST /admin/backends` (empty body) and
/// `DELETE /admin/backends/{id}`.
///
/// ```
/// use discovery::{Ownership, ScaleError, ScaleFuture, Scaler};
/// use tower_hashring::NodeId;
///
/// /// A platform that is always full.
/// #[derive(Debug)]
/// struct Full;
///
/// impl Scaler for Full {
///     fn start_one(&self) -> ScaleFuture<'_, NodeId> {
///         Box::pin(async { Err(ScaleError::AtCap("no room".into())) })
///     }
///     fn ownership<'a>(&'a self, _: &'a NodeId) -> ScaleFuture<'a, Ownership> {
///         Box::pin(async { Ok(Ownership::Unknown) })
///     }
///     fn stop<'a>(&'a self, _: &'a NodeId) -> ScaleFuture<'a, ()> {
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait Scaler: std::fmt::Debug + Send + Sync + 'static {
    /// Starts one more backend; it joins the ring once its source reports it.
    fn start_one(&self) -> ScaleFuture<'_, NodeId>;

    /// Whether `id` is one of the scaler's backends.
    fn ownership<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, Ownership>;

    /// Stops backend `id` (after the gateway drained it).
    fn stop<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, ()>;

    /// Runs one backend fewer, of the platform's choosing, for `DELETE /admin/backends`;
    /// returns how many remain. The platform must let the backend drain before it stops
    /// (Swarm does: see `SwarmScaler`). By default a scaler stops only named backends.
    fn scale_down(&self) -> ScaleFuture<'_, u64> {
        Box::pin(async {
            Err(ScaleError::Conflict(
                "this gateway's scaler stops a named backend: DELETE /admin/backends/{id}".into(),
            ))
        })
    }

    /// The changes of the scaler's backends, for one whose backends no discovery source
    /// sees (taken once; `None`: a discovery source reports them, e.g. Docker's labels).
    fn members(&self) -> Option<ScaledMembers> {
        None
    }
}

#[cfg(feature = "docker")]
impl Scaler for DockerScaler {
    fn start_one(&self) -> ScaleFuture<'_, NodeId> {
        Box::pin(async move { Ok(NodeId::from(DockerScaler::start_one(self).await?)) })
    }

    fn ownership<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, Ownership> {
        Box::pin(async move {
            match self.owns(id.as_str()).await {
                Ok(true) => Ok(Ownership::Ours),
                Ok(false) => Ok(Ownership::NotOurs(
                    DockerError::NotOurs(id.to_string()).to_string(),
                )),
                Err(DockerError::NotFound(_)) => Ok(Ownership::Unknown),
                Err(error) => Err(error.into()),
            }
        })
    }

    fn stop<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, ()> {
        Box::pin(async move { Ok(DockerScaler::stop(self, id.as_str()).await?) })
    }
}

/// A Swarm service's replicas: members come from the [`SwarmSource`](crate::SwarmSource),
/// which every gateway follows, so a scale by any gateway reaches them all.
#[cfg(feature = "docker")]
impl Scaler for SwarmScaler {
    fn start_one(&self) -> ScaleFuture<'_, NodeId> {
        Box::pin(async move { Ok(NodeId::from(self.scale_up().await?)) })
    }

    /// None is the scaler's to stop by name: Swarm picks which replica a scale-down stops.
    fn ownership<'a>(&'a self, _: &'a NodeId) -> ScaleFuture<'a, Ownership> {
        Box::pin(async { Ok(Ownership::Unknown) })
    }

    fn stop<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, ()> {
        Box::pin(async move {
            Err(ScaleError::Conflict(format!(
                "Swarm picks which replica a scale-down stops, not {id}: DELETE /admin/backends"
            )))
        })
    }

    fn scale_down(&self) -> ScaleFuture<'_, u64> {
        Box::pin(async move { Ok(SwarmScaler::scale_down(self).await?) })
    }
}

#[cfg(feature = "docker")]
impl From<DockerError> for ScaleError {
    fn from(error: DockerError) -> Self {
        match error {
            DockerError::AtCap(_) => ScaleError::AtCap(error.to_string()),
            DockerError::AtBound { bound: "cap", .. } => ScaleError::AtCap(error.to_string()),
            DockerError::AtBound { .. }
            | DockerError::Concurrent(_)
            | DockerError::SeveralServices(_) => ScaleError::Conflict(error.to_string()),
            DockerError::NotOurs(_) | DockerError::ServiceNotOurs(_) => {
                ScaleError::NotOurs(error.to_string())
            }
            error => ScaleError::Failed(error.to_string()),
        }
    }
}
