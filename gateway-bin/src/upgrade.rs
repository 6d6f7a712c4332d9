//! The gateway's listeners for an in-place upgrade (`kill -USR2 <pid>`, with
//! `tower_ws_proxy::server::handover::Upgrader`): named `public.N`, `admin` and `metrics`,
//! bound here or taken from the process before this one.

use std::{net::TcpListener, os::fd::OwnedFd, path::PathBuf};

use tower_hashring::{HttpKey, SharedHashRing};
use tower_ws_migrate::ProxiedConnection;
use tower_ws_proxy::{
    server::{
        bind_workers,
        handover::{receive, take_listeners, Inherited, HANDOVER_ENV},
    },
    MakeHandle, Resumer, Upstream,
};

use crate::{cluster::ClusterView, config::Listen};

/// The gateway's listening sockets: bound here, or taken from the process before this one.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// The public listener: one per worker thread, or one.
    pub(crate) public: Vec<TcpListener>,
    pub(crate) admin: TcpListener,
    pub(crate) metrics: Option<TcpListener>,
    /// The old process's offer, answered once this one serves.
    inherited: Option<Inherited>,
}

impl Listeners {
    /// With [`HANDOVER_ENV`] set, the old process's listeners (whatever `listen` says: the
    /// sockets are the same); otherwise bound as `listen` says.
    pub(crate) async fn open(listen: &Listen) -> std::io::Result<Self> {
        if let Some(path) = std::env::var_os(HANDOVER_ENV) {
            return Self::take(PathBuf::from(path)).await;
        }
        let public = match listen.workers {
            0 => vec![TcpListener::bind(listen.public)?],
            workers => bind_workers(listen.public, workers)?,
        };
        let metrics = listen.metrics.map(TcpListener::bind).transpose()?;
        Ok(Self {
            public,
            admin: TcpListener::bind(listen.admin)?,
            metrics,
            inherited: None,
        })
    }

    async fn take(path: PathBuf) -> std::io::Result<Self> {
        let mut inherited = take_listeners(&path).await.map_err(std::io::Error::other)?;
        let mut public = Vec::new();
        while let Some(listener) = inherited.listener(&format!("public.{}", public.len())) {
            public.push(listener);
        }
        let admin = inherited.listener("admin");
        let (Some(admin), false) = (admin, public.is_empty()) else {
            let names = inherited.names().join(", ");
            return Err(std::io::Error::other(format!(
                "the old process offered no public or admin listener ({names})"
            )));
        };
        tracing::info!(
            listeners = public.len() + 1,
            "took the listeners of the old process"
        );
        Ok(Self {
            public,
            admin,
            metrics: inherited.listener("metrics"),
            inherited: Some(inherited),
        })
    }

    /// Copies of the sockets, named, for a later upgrade.
    pub(crate) fn copies(&self) -> std::io::Result<Vec<(String, OwnedFd)>> {
        let mut copies = Vec::new();
        for (n, listener) in self.public.iter().enumerate() {
            copies.push((format!("public.{n}"), listener.try_clone()?.into()));
        }
        copies.push(("admin".to_owned(), self.admin.try_clone()?.into()));
        if let Some(metrics) = &self.metrics {
            copies.push(("metrics".to_owned(), metrics.try_clone()?.into()));
        }
        Ok(copies)
    }

    /// The offer to answer once this process serves, if it was started by an upgrade.
    pub(crate) fn take_offer(&mut self) -> Option<Inherited> {
        self.inherited.take()
    }
}

/// Tells the old process, if this one took its listeners, that it serves: once the ring has
/// members to route to (or after 10 s without), so that no request finds an empty ring.
/// Then the old process's WebSockets are resumed here, in the background.
pub(crate) async fn answer_offer(
    offer: Option<Inherited>,
    ring: &SharedHashRing<Upstream, HttpKey>,
    (resumer, make): (Resumer<ProxiedConnection>, MakeHandle<ProxiedConnection>),
    cluster: ClusterView,
) {
    let Some(offer) = offer else {
        return;
    };
    let routable = async {
        while ring.snapshot().ring().nodes().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), routable).await;
    match offer.serving().await {
        Ok(arrivals) => drop(tokio::spawn(async move {
            let received = receive(arrivals, &resumer, Some(&make)).await;
            tracing::info!(?received, "took the old process's websockets");
            cluster.handed_over(received);
        })),
        Err(error) => tracing::warn!(%error, "the old process did not hear that this one serves"),
    }
}
