//! Mutual TLS between nodes: TLS 1.3 with the ring provider; each side
//! presents a certificate signed by the cluster's CA and accepts only a
//! peer whose certificate is.
//!
//! ractor_cluster's own listener performs the TLS handshake inside its
//! accept loop, one connection at a time, so one client that connects and
//! says nothing would stall every later accept. This node therefore runs its
//! own listener on the cluster address: each handshake runs in its own task
//! with a deadline and a cap on how many run at once, and only a completed
//! handshake is handed to the NodeServer as a TLS session. The NodeServer's
//! own listener binds an ephemeral loopback port that nobody dials, and
//! demands the same mutual TLS. Outgoing sessions use
//! `ractor_cluster::client_connect_enc`.

use super::config::ClusterError;
pub use super::settings::{ENV_CA, ENV_CERT, ENV_KEY, ENV_SERVER_NAME, TlsFiles};
use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Handshakes in progress at once on the listener; a connection beyond
/// them is closed at once.
const MAX_HANDSHAKES: usize = 64;

/// The loaded TLS material of a node: what accepts and what dials.
#[derive(Clone)]
pub(crate) struct ClusterTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn tls_err(what: &str, path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Tls(format!("{what} {}: {e}", path.display()))
}

impl ClusterTls {
    /// Reads the PEM files and builds the TLS 1.3 server and client configs.
    pub fn load(files: &TlsFiles) -> Result<ClusterTls, ClusterError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| tls_err("cannot read the certificate", &files.cert, e))?;
        if certs.is_empty() {
            return Err(tls_err(
                "no certificate in",
                &files.cert,
                "expected a PEM CERTIFICATE",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| tls_err("cannot read the private key", &files.key, e))?;
        let mut roots = RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.ca)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| tls_err("cannot read the CA certificate", &files.ca, e))?;
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| tls_err("bad CA certificate in", &files.ca, e))?;
        }
        if roots.is_empty() {
            return Err(tls_err(
                "no CA certificate in",
                &files.ca,
                "expected a PEM CERTIFICATE",
            ));
        }
        let roots = Arc::new(roots);
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let tls13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls_err("cannot verify clients with", &files.ca, e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(|e| ClusterError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| tls_err("certificate and key do not fit", &files.cert, e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(tls13)
            .map_err(|e| ClusterError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls_err("certificate and key do not fit", &files.cert, e))?;
        let server_name = files
            .server_name
            .as_ref()
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|e| {
                    ClusterError::InvalidConfig(format!("cluster TLS server name {n:?}: {e}"))
                })
            })
            .transpose()?;
        Ok(ClusterTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    /// The name a dialed peer's certificate must carry: the configured
    /// server name, or the host of `addr` (`host:port`, `[v6]:port`).
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, String> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))
    }
}

/// Accepts connections on `listener`, completes each TLS handshake (within
/// `deadline`, at most [`MAX_HANDSHAKES`] at once) in its own task, and
/// hands the encrypted stream to the NodeServer as an incoming session.
/// Runs until the NodeServer stops or the task is aborted.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    node_server: ActorRef<NodeServerMessage>,
    deadline: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer_addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cluster listener: accept failed");
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if node_server.get_status() >= ractor::ActorStatus::Stopping {
            return;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer_addr, "cluster listener: too many TLS handshakes in progress; connection closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let node_server = node_server.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let local_addr = match stream.set_nodelay(true).and_then(|()| stream.local_addr()) {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(peer = %peer_addr, error = %e, "cluster connection lost before its TLS handshake");
                    return;
                }
            };
            let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(peer = %peer_addr, error = %e, "cluster TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %peer_addr, "cluster TLS handshake timed out");
                    return;
                }
            };
            let _ = node_server.cast(NodeServerMessage::ConnectionOpened {
                stream: Box::new(NetworkStream::TlsServer {
                    peer_addr,
                    local_addr,
                    stream,
                }),
                is_server: true,
            });
        });
    }
}
