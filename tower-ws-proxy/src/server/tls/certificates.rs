//! The certificates a TLS listener serves, chosen by SNI and replaced in place on reload.

use std::{
    fmt,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
};

use tokio_rustls::rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::{CertificateError, ReloadError, TlsSettings};

/// The certificates of a TLS listener: a default one and one per SNI name, each loaded from
/// a PEM certificate chain and key file pair, and each replaced in place by
/// [`reload`](Self::reload) (or the [`watch`](Self::watch)er) while handshakes go on.
///
/// A client that asks for a name no entry has, or for none, gets the default certificate
/// (rather than a failed handshake: the client then reports the name mismatch itself,
/// which says more than a handshake alert does).
///
/// A reload that fails keeps the certificate that was in use: the error is logged, counted
/// in [`reload_failures`](Self::reload_failures) (and, with the `metrics` feature, in the
/// `tls_certificate_reload_failures` counter of `register`), and
/// returned. Open connections never notice a reload: a certificate is only read during a
/// handshake.
///
/// ```no_run
/// use tower_ws_proxy::server::tls::{Certificates, TlsSettings};
///
/// let certificates = Certificates::load(&TlsSettings::new("cert.pem", "key.pem"))?;
/// // On SIGHUP, say:
/// if let Err(error) = certificates.reload() {
///     eprintln!("still serving the previous certificate: {error}");
/// }
/// assert_eq!(certificates.reload_failures(), 0);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct Certificates {
    default: Slot,
    named: Vec<Slot>,
    provider: Arc<CryptoProvider>,
    reload_failures: Arc<AtomicU64>,
    /// One reload at a time (SIGHUP beside the watcher): an older read finishing last would
    /// put the older certificate back.
    reloading: std::sync::Mutex<()>,
}

/// One certificate and the files it comes from.
struct Slot {
    /// Lowercase; empty for the default certificate.
    name: String,
    cert: PathBuf,
    key: PathBuf,
    loaded: RwLock<Loaded>,
}

struct Loaded {
    certified: Arc<CertifiedKey>,
    /// A hash of the file contents last loaded or failed to load, so that the watcher
    /// tries (and complains about) each version of the files once.
    tried: u64,
    /// A hash of the file contents the watcher saw last.
    seen: u64,
}

/// The contents hash of a pair that cannot be read.
const UNREADABLE: u64 = 0;

impl Certificates {
    /// Loads every certificate of `settings`; the error names the file that could not be
    /// read or used.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, CertificateError> {
        let provider = Arc::new(super::provider());
        let slot = |name: &str, cert: &Path, key: &Path| -> Result<Slot, CertificateError> {
            let files = read_pair(cert, key)?;
            let certified = certified_key(cert, key, &files, &provider)?;
            Ok(Slot {
                name: name.to_ascii_lowercase(),
                cert: cert.to_owned(),
                key: key.to_owned(),
                loaded: RwLock::new(Loaded {
                    certified: Arc::new(certified),
                    tried: files.hash(),
                    seen: files.hash(),
                }),
            })
        };
        let default = slot("", &settings.cert, &settings.key)?;
        let named = settings
            .sni
            .iter()
            .map(|sni| slot(&sni.name, &sni.cert, &sni.key))
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Self {
            default,
            named,
            provider,
            reload_failures: Arc::default(),
            reloading: std::sync::Mutex::new(()),
        }))
    }

    /// Loads every certificate again: the ones whose files load are replaced, the others
    /// keep serving what they served (each failure is logged and counted, and returned).
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.reload_where(|_, _| true)
    }

    /// Reloads the certificates whose files changed and then stayed the same for one call:
    /// a pair caught halfway through being written is left until it is whole, and a pair
    /// that fails is tried again only once its files change again.
    pub(super) fn reload_settled(&self) -> Result<(), ReloadError> {
        self.reload_where(|loaded, contents| {
            let settled = contents == loaded.seen;
            loaded.seen = contents;
            contents != loaded.tried && settled
        })
    }

    /// Reloads the slots for which `wanted(state, hash of the files now)` holds.
    fn reload_where(&self, wanted: impl Fn(&mut Loaded, u64) -> bool) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let mut failed = Vec::new();
        for slot in self.slots() {
            let files = read_pair(&slot.cert, &slot.key);
            let contents = files.as_ref().map_or(UNREADABLE, PairContents::hash);
            {
                let mut loaded = slot.write();
                if !wanted(&mut loaded, contents) {
                    continue;
                }
                loaded.tried = contents;
            }
            // Parsed without the lock: handshakes go on reading the current certificate.
            match files
                .and_then(|files| certified_key(&slot.cert, &slot.key, &files, &self.provider))
            {
                Ok(certified) => {
                    slot.write().certified = Arc::new(certified);
                    tracing::info!(cert = %slot.cert.display(), "TLS certificate loaded");
                }
                Err(error) => failed.push(error),
            }
        }
        for error in &failed {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "TLS certificate not reloaded: the previous one stays in use");
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(ReloadError { failed }),
        }
    }

    /// Certificates that failed to reload since the start (each file pair counts once per
    /// attempt).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// The certificate a client asking for `server_name` gets now (the default one for
    /// `None` or a name no entry has).
    pub fn for_name(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let slot = server_name
            .and_then(|name| self.named.iter().find(|slot| matches(&slot.name, name)))
            .unwrap_or(&self.default);
        // A panic elsewhere while holding the lock leaves a whole value behind: serve it.
        let loaded = slot.loaded.read().unwrap_or_else(PoisonError::into_inner);
        loaded.certified.clone()
    }

    #[cfg(feature = "metrics")]
    pub(super) fn failure_count(&self) -> Arc<AtomicU64> {
        self.reload_failures.clone()
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        std::iter::once(&self.default).chain(&self.named)
    }
}

impl Slot {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Loaded> {
        // A panic elsewhere while holding the lock leaves a whole value behind.
        self.loaded.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.for_name(client_hello.server_name()))
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("default", &self.default.cert)
            .field(
                "named",
                &self.named.iter().map(|slot| &slot.name).collect::<Vec<_>>(),
            )
            .field("reload_failures", &self.reload_failures())
            .finish_non_exhaustive()
    }
}

/// `pattern` (lowercase; `*.` first matches exactly one label) against a client's name.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Both files of a pair, read at one moment, so that what is hashed is what is loaded.
struct PairContents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl PairContents {
    fn hash(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.cert.hash(&mut hasher);
        self.key.hash(&mut hasher);
        // Never the hash of an unreadable pair.
        hasher.finish().max(UNREADABLE + 1)
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<PairContents, CertificateError> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|source| CertificateError::read(path, source));
    Ok(PairContents {
        cert: read(cert)?,
        key: read(key)?,
    })
}

/// The chain and key of `files`, checked to belong together.
fn certified_key(
    cert: &Path,
    key: &Path,
    files: &PairContents,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertificateError> {
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertificateError::unusable(cert, error))?;
    if chain.is_empty() {
        return Err(CertificateError::unusable(cert, "no CERTIFICATE in it"));
    }
    let private = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|error| CertificateError::unusable(key, error))?;
    CertifiedKey::from_der(chain, private, provider)
        .map_err(|error| CertificateError::unusable(key, error))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn names_match_exactly_or_by_one_wildcard_label() {
        assert!(matches("chat.example.com", "Chat.Example.com"));
        assert!(!matches("chat.example.com", "example.com"));
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", ".example.com"));
    }
}
