//! HTTPS on the server's own port (`serve --tls-cert F --tls-key F [--client-ca F]`), for
//! deployments without a TLS-terminating proxy in front: rustls (ring), PEM files, optional
//! mutual TLS, and the certificate re-read on SIGHUP so that a renewal needs no restart.
//!
//! Handshakes run in their own tasks with a time limit, not in the accept loop, so a client
//! that opens a connection and sends nothing cannot hold up everyone else's handshakes; at
//! most [`MAX_HANDSHAKES`] run at once. A connection that does not complete a handshake
//! (plain HTTP on this port, a client without a certificate under `--client-ca`) is closed
//! without an HTTP answer.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::serve::{IncomingStream, Listener};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::apikeys::ClientCertificate;

/// Longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once; more connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;

/// The PEM files TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files into a server configuration (TLS 1.2 and 1.3, HTTP/1.1 by ALPN).
    ///
    /// # Errors
    /// A file that cannot be read or holds no usable certificate or key, or a key that does
    /// not match the certificate; the message names the file.
    pub fn load(&self) -> Result<Arc<ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(Iterator::collect)
            .with_context(|| format!("cannot read certificates from {}", self.cert.display()))?;
        if certs.is_empty() {
            anyhow::bail!("no certificate in {}", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("cannot read a private key from {}", self.key.display()))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &self.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .with_context(|| {
                        format!("cannot read CA certificates from {}", path.display())
                    })?
                {
                    roots
                        .add(cert)
                        .with_context(|| format!("bad CA certificate in {}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .with_context(|| format!("client CAs in {}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).with_context(|| {
            format!(
                "the key in {} does not fit the certificate in {}",
                self.key.display(),
                self.cert.display()
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The TLS configuration in use, replaced on reload.
#[derive(Debug)]
pub struct TlsState {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    /// Loads `files`.
    ///
    /// # Errors
    /// As [`TlsFiles::load`].
    pub fn new(files: TlsFiles) -> Result<Arc<Self>> {
        let config = files.load()?;
        Ok(Arc::new(TlsState {
            files,
            config: RwLock::new(config),
        }))
    }

    /// Reads the files again; new connections use them, open ones keep theirs. A file that
    /// does not load keeps the old configuration.
    ///
    /// # Errors
    /// As [`TlsFiles::load`].
    pub fn reload(&self) -> Result<()> {
        let config = self.files.load()?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// Completes the server side of a TLS handshake on `stream` under the configuration in
    /// use, within [`HANDSHAKE_TIMEOUT`]: what any accept loop (this module's, or one that
    /// also tracks connections) does with a fresh TCP connection.
    ///
    /// # Errors
    /// The handshake failed (plain HTTP, no or a wrong client certificate...) or timed out.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor().accept(stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.config
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A listener whose connections have completed a TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts TCP connections on `tcp` and hands them on once their handshake under `tls`
    /// completed (must be called inside the runtime).
    ///
    /// # Errors
    /// When the listener has no local address.
    pub fn new(tcp: TcpListener, tls: Arc<TlsState>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (sender, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, tls, sender));
        Ok(TlsListener { ready, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Arc<TlsState>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of file descriptors and the like: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let (tls, ready) = (tls.clone(), ready.clone());
        tokio::spawn(async move {
            if let Ok(stream) = tls.accept(stream).await {
                drop(permit);
                let _ = ready.send((stream, peer)).await;
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it never does while the listener lives): accept nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's address on a TLS connection (axum knows how to find it only for plain TCP),
/// and the certificate it presented, if any (verified by the handshake).
#[derive(Debug, Clone, Copy)]
struct PeerAddr(SocketAddr, Option<ClientCertificate>);

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let certificate = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
            .map(|der| ClientCertificate::of_der(der));
        PeerAddr(*stream.remote_addr(), certificate)
    }
}

/// Makes the client address available as `ConnectInfo<SocketAddr>`, as on plain HTTP, and
/// the client certificate as a [`ClientCertificate`] for the API-key check.
async fn as_socket_addr(mut request: Request) -> Request {
    if let Some(ConnectInfo(PeerAddr(addr, certificate))) =
        request.extensions().get::<ConnectInfo<PeerAddr>>().copied()
    {
        request.extensions_mut().insert(ConnectInfo(addr));
        if let Some(certificate) = certificate {
            request.extensions_mut().insert(certificate);
        }
    }
    request
}

/// Like [`crate::http::serve`], on HTTPS: serves `router` until `shutdown` completes, then
/// lets in-flight requests finish for at most `grace`.
///
/// # Errors
/// When serving fails.
pub async fn serve_tls(
    listener: TlsListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::map_request(as_socket_addr));
    let (signal, stopping) = crate::http::stop_signal(shutdown);
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(signal);
    crate::http::drain(server.into_future(), stopping, grace).await
}

/// Re-reads the certificate, key and client CAs on SIGHUP (after a renewal).
pub fn reload_on_sighup(state: Arc<TlsState>) {
    crate::hangup::on_sighup("the TLS certificate", move || {
        state.reload().map(|()| "the TLS certificate".to_owned())
    });
}
