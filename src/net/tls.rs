//! TLS for the listener and the client: rustls with the `ring` provider, configured from PEM
//! files (a certificate chain and its key for a server; the CAs to trust for a client).
//!
//! Everything is loaded and checked once, before a socket is bound: a missing file, a file
//! that holds no PEM certificate or key, and a key that does not belong to the certificate
//! are errors that name the file and the problem.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why a TLS configuration could not be built. Each message names the file(s).
#[derive(Debug, Error)]
pub enum TlsError {
    /// The file cannot be read (missing, unreadable).
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is read but holds no usable PEM of the expected kind.
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: String },
    /// The private key is not the certificate's.
    #[error("{key}: this private key does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the material (an unsupported key type, a malformed certificate).
    #[error("{path}: {problem}")]
    Refused { path: PathBuf, problem: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            problem: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            problem: "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (expected -----BEGIN PRIVATE KEY----- or similar)".into()
            }
            e => format!("not a PEM private key file: {e}"),
        },
    })
}

/// A listener's TLS: the certificate chain and key it presents. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(…)")
    }
}

impl ServerTls {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (its PEM private key) and checks that
    /// they belong together.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let chain = certificates(cert)?;
        let secret = private_key(key)?;
        let provider = provider();
        let signing = provider
            .key_provider
            .load_private_key(secret.clone_key())
            .map_err(|e| TlsError::Refused {
                path: key.to_path_buf(),
                problem: format!("unusable private key: {e}"),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                })
            }
            // `Unknown`: the public key cannot be derived for this key type; rustls below
            // still refuses a certificate it cannot use.
            Err(_) => {}
        }
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Refused {
                path: cert.to_path_buf(),
                problem: e.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(chain, secret)
            .map_err(|e| TlsError::Refused {
                path: cert.to_path_buf(),
                problem: format!("with the key in {}: {e}", key.display()),
            })?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// What a client trusts for `https://` URLs. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// Where the trust came from, for `Debug`.
    source: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls({})", self.source)
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for ClientTls {}

impl ClientTls {
    /// Trusts only the CA certificates in the PEM file `ca` (a cluster's own CA, or a
    /// self-signed server certificate itself).
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca)? {
            roots.add(cert).map_err(|e| TlsError::Refused {
                path: ca.to_path_buf(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Self::with_roots(roots, ca.display().to_string()).map_err(|e| TlsError::Refused {
            path: ca.to_path_buf(),
            problem: e.to_string(),
        })
    }

    /// Trusts the public web PKI (Mozilla's root list, built in): the default for `https://`
    /// URLs when no CA file is given.
    pub fn web_pki() -> Result<ClientTls, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(roots, "web PKI roots".into())
    }

    fn with_roots(
        roots: rustls::RootCertStore,
        source: String,
    ) -> Result<ClientTls, rustls::Error> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            source,
        })
    }

    pub(crate) fn config(&self) -> rustls::ClientConfig {
        (*self.config).clone()
    }
}
