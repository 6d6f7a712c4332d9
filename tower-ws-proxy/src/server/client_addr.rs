//! The client's address, as a request extension.

use std::net::SocketAddr;

/// The address an accepted connection came from, put into every request's extensions by
/// [`serve`](super::serve) and [`serve_on_workers`](super::serve_on_workers). In an axum
/// handler, extract it with `Extension<ClientAddr>`.
///
/// ```
/// use tower_ws_proxy::server::ClientAddr;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(ClientAddr("127.0.0.1:4000".parse().unwrap()));
/// assert_eq!(request.extensions().get::<ClientAddr>().unwrap().0.port(), 4000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);
