//! Why a certificate could not be loaded.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// A certificate or key file that could not be read or used; it names the file.
///
/// ```
/// use tower_ws_proxy::server::tls::{Certificates, TlsSettings};
///
/// let error = Certificates::load(&TlsSettings::new("/nonexistent/cert.pem", "key.pem")).unwrap_err();
/// assert_eq!(error.path(), std::path::Path::new("/nonexistent/cert.pem"));
/// assert!(error.to_string().contains("/nonexistent/cert.pem"));
/// ```
#[derive(Debug)]
pub struct CertificateError {
    path: PathBuf,
    reason: Reason,
}

#[derive(Debug)]
enum Reason {
    Read(std::io::Error),
    Unusable(String),
}

impl CertificateError {
    pub(crate) fn read(path: &Path, error: std::io::Error) -> Self {
        Self {
            path: path.to_owned(),
            reason: Reason::Read(error),
        }
    }

    pub(crate) fn unusable(path: &Path, error: impl fmt::Display) -> Self {
        Self {
            path: path.to_owned(),
            reason: Reason::Unusable(error.to_string()),
        }
    }

    /// The file at fault.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.reason {
            Reason::Read(error) => write!(f, "cannot read {path}: {error}"),
            Reason::Unusable(error) => write!(f, "cannot use {path}: {error}"),
        }
    }
}

impl std::error::Error for CertificateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            Reason::Read(error) => Some(error),
            Reason::Unusable(_) => None,
        }
    }
}

/// The certificates that failed to reload (the others were replaced); each keeps serving
/// its previous version.
///
/// ```no_run
/// use tower_ws_proxy::server::tls::{Certificates, TlsSettings};
///
/// let certificates = Certificates::load(&TlsSettings::new("cert.pem", "key.pem"))?;
/// std::fs::write("cert.pem", "not a certificate")?;
/// let error = certificates.reload().unwrap_err();
/// assert_eq!(error.failed[0].path(), std::path::Path::new("cert.pem"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct ReloadError {
    /// One error per certificate that failed, naming its file.
    pub failed: Vec<CertificateError>,
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, error) in self.failed.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ReloadError {}
