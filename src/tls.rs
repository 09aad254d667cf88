//! TLS between hosts (issue 16): the admin API and the cluster RPC over rustls.
//!
//! One place builds every TLS configuration Baton uses, from the `[tls]` PEM files:
//! - [`Material::server_config`]: the HTTPS listener. With `peer_auth = "mtls"` it asks
//!   clients for a certificate chaining to `ca` but does not demand one (the CLI and
//!   operators' tools have none); the cluster routes then refuse a connection that did
//!   not present one ([`ClientCert`]).
//! - [`client_config`]: peers (reqwest) and the CLI (ureq) trust `ca` only, never the
//!   system roots, and in mTLS mode peers present this host's cert as their identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// How peers prove they belong to the cluster over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerAuth {
    /// A client certificate chaining to `tls.ca`, plus the cluster secret.
    #[default]
    Mtls,
    /// Server-authenticated TLS plus the cluster secret.
    Secret,
}

impl std::str::FromStr for PeerAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mtls" => Ok(PeerAuth::Mtls),
            "secret" => Ok(PeerAuth::Secret),
            _ => Err(format!("{s:?} is not one of: mtls, secret")),
        }
    }
}

impl std::fmt::Display for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerAuth::Mtls => "mtls",
            PeerAuth::Secret => "secret",
        })
    }
}

/// Whether the client of a TLS connection presented a certificate that chains to
/// `tls.ca` (rustls refuses the handshake when one is presented that does not). Put in
/// each request's extensions by the connection loop in mTLS mode only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCert(pub bool);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read `{key}` file {path}: {source}")]
    Read {
        /// The setting naming the file.
        key: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("`{key}` file {path}: {message}")]
    Pem {
        /// The setting naming the file.
        key: &'static str,
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the cert).
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

/// The certificates of a PEM file.
pub fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key,
            path: path.to_path_buf(),
            message: "no CERTIFICATE block in it".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        key: "tls.key",
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: String| TlsError::Pem {
        key: "tls.key",
        path: path.to_path_buf(),
        message,
    };
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("no PRIVATE KEY block in it".into()))
}

/// Roots to trust: the certificates of a CA bundle.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs("tls.ca", path)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            key: "tls.ca",
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// ring, as reqwest's and ureq's rustls use: rustls now prefers aws-lc-rs (post-quantum
/// key exchange), which needs cmake and a long C build; ring is the pure-Rust+asm one.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// This host's TLS files, read and checked once at start-up.
#[derive(Debug, Clone)]
pub struct Material {
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    ca: PathBuf,
    /// How peers authenticate.
    pub peer_auth: PeerAuth,
}

impl Material {
    /// The files `[tls]` names (`cert`, `key`, `ca`), or `None` when TLS is off (any
    /// of them unset; the configuration refuses some but not all of them set).
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        peer_auth: PeerAuth,
    ) -> Result<Option<Material>, TlsError> {
        let (Some(cert), Some(key), Some(ca)) = (cert, key, ca) else {
            return Ok(None);
        };
        let m = Material {
            certs: read_certs("tls.cert", cert)?,
            key: Arc::new(read_key(key)?),
            ca: ca.to_path_buf(),
            peer_auth,
        };
        // Both sides now, so a wrong key or CA file fails the start, not the first peer.
        m.server_config()?;
        m.client_config()?;
        Ok(Some(m))
    }

    /// The HTTPS listener's configuration (HTTP/1.1 only).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?;
        let b = match self.peer_auth {
            PeerAuth::Mtls => {
                let v = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(&self.ca)?),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(rustls_err)?;
                b.with_client_cert_verifier(v)
            }
            PeerAuth::Secret => b.with_no_client_auth(),
        };
        let mut c = b
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(rustls_err)?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The configuration this host's peer client uses: trusts `ca`, and in mTLS mode
    /// presents this host's certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let identity = match self.peer_auth {
            PeerAuth::Mtls => Some((self.certs.clone(), self.key.clone_key())),
            PeerAuth::Secret => None,
        };
        client_config(&self.ca, identity)
    }
}

/// A client configuration trusting only the CA bundle at `ca`, with an optional client
/// identity (certificate chain and key). Used by peers and by the CLI.
pub fn client_config(
    ca: &Path,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_root_certificates(roots(ca)?);
    let mut c = match identity {
        Some((certs, key)) => b.with_client_auth_cert(certs, key).map_err(rustls_err)?,
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// Good files load for both modes; a key that is not the cert's, a file without a
    /// certificate and a missing file are refused at start-up, naming the setting.
    #[test]
    fn material_loads_and_bad_files_name_their_setting() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(d.path(), "a");
        let (_, other_key) = write_pair(d.path(), "b");
        let load = |cert: &Path, key: &Path, ca: &Path, peer_auth| {
            Material::load(Some(cert), Some(key), Some(ca), peer_auth)
        };
        assert!(Material::load(None, None, None, PeerAuth::Mtls)
            .unwrap()
            .is_none());
        for mode in [PeerAuth::Mtls, PeerAuth::Secret] {
            let m = load(&cert, &key, &cert, mode).unwrap();
            assert_eq!(m.unwrap().peer_auth, mode);
        }
        let e = load(&cert, &other_key, &cert, PeerAuth::Mtls).unwrap_err();
        assert!(matches!(e, TlsError::Rustls(_)), "{e}");
        let e = load(&key, &key, &cert, PeerAuth::Mtls).unwrap_err();
        assert!(e.to_string().contains("`tls.cert`"), "{e}");
        let e = load(&cert, &key, &d.path().join("nope"), PeerAuth::Mtls).unwrap_err();
        assert!(e.to_string().contains("`tls.ca`"), "{e}");
    }
}
