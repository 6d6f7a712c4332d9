//! A process's listening sockets by name: bound, or taken from the process before it.

use std::{net::TcpListener, os::fd::OwnedFd, path::PathBuf};

use super::{take_listeners, Inherited, HANDOVER_ENV};

/// A process's listening sockets by name: bound here or, when an upgrade started this
/// process ([`HANDOVER_ENV`] set by the old one's [`Upgrader`](super::Upgrader)), taken from
/// the process before it; and the copies to lend the next one.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use tower_ws_proxy::server::handover::{NamedListeners, Upgrader};
///
/// let mut listeners = NamedListeners::bind_or_take(|| {
///     Ok(vec![("public".to_owned(), std::net::TcpListener::bind("0.0.0.0:8080")?)])
/// })
/// .await?;
/// let upgrader = Upgrader::new(listeners.copies()?);
/// let public = listeners.take("public").expect("bound or offered");
/// let offer = listeners.take_offer(); // answer `serving()` once `public` accepts
/// # let _ = (upgrader, public, offer); Ok(()) }
/// ```
#[derive(Debug)]
pub struct NamedListeners {
    listeners: Vec<(String, TcpListener)>,
    offer: Option<Inherited>,
}

impl NamedListeners {
    /// The old process's listeners when an upgrade started this one (whatever `bind` would
    /// give: the sockets are the same), or else those `bind` makes.
    pub async fn bind_or_take(
        bind: impl FnOnce() -> std::io::Result<Vec<(String, TcpListener)>>,
    ) -> std::io::Result<Self> {
        let Some(path) = std::env::var_os(HANDOVER_ENV) else {
            return Ok(Self {
                listeners: bind()?,
                offer: None,
            });
        };
        let mut offer = take_listeners(PathBuf::from(path))
            .await
            .map_err(std::io::Error::other)?;
        let names: Vec<String> = offer.names().into_iter().map(str::to_owned).collect();
        let listeners: Vec<_> = names
            .into_iter()
            .filter_map(|name| offer.listener(&name).map(|listener| (name, listener)))
            .collect();
        tracing::info!(
            listeners = listeners.len(),
            "took the listeners of the old process"
        );
        Ok(Self {
            listeners,
            offer: Some(offer),
        })
    }

    /// Copies of every listener still here, named, for an [`Upgrader`](super::Upgrader).
    pub fn copies(&self) -> std::io::Result<Vec<(String, OwnedFd)>> {
        self.listeners
            .iter()
            .map(|(name, listener)| Ok((name.clone(), listener.try_clone()?.into())))
            .collect()
    }

    /// The listener named `name`.
    pub fn take(&mut self, name: &str) -> Option<TcpListener> {
        let at = self.listeners.iter().position(|(n, _)| n == name)?;
        Some(self.listeners.swap_remove(at).1)
    }

    /// The listeners named `prefix.0`, `prefix.1`, … up to the first one missing (one per
    /// worker thread, say).
    pub fn take_numbered(&mut self, prefix: &str) -> Vec<TcpListener> {
        let mut taken = Vec::new();
        while let Some(listener) = self.take(&format!("{prefix}.{}", taken.len())) {
            taken.push(listener);
        }
        taken
    }

    /// The old process's offer, to answer with [`Inherited::serving`] once this process
    /// accepts on the listeners; `None` when they were bound here.
    pub fn take_offer(&mut self) -> Option<Inherited> {
        self.offer.take()
    }
}
