//! HTTPS on the server's own port (`serve --tls-cert F --tls-key F [--client-ca F]`), for
//! deployments without a TLS-terminating proxy in front: rustls (ring), PEM files, optional
//! mutual TLS, and the certificate re-read on SIGHUP so that a renewal needs no restart.
//!
//! The connections are those of plain HTTP ([`crate::connections::serve`], with
//! [`TlsState`] as its [`Handshake`]): the same cap and shedding, the same head and idle
//! deadlines, and the handshake runs in the connection's own task inside its first head's
//! deadline, so slow or silent handshakes hold no more than slow heads do. A connection that
//! does not complete a handshake (plain HTTP on this port, a client without a certificate
//! under `--client-ca`) is closed without an HTTP answer.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::apikeys::ClientCertificate;
use crate::connections::Handshake;

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
    files: RwLock<TlsFiles>,
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
            files: RwLock::new(files),
            config: RwLock::new(config),
        }))
    }

    /// Reads the files again; new connections use them, open ones keep theirs. A file that
    /// does not load keeps the old configuration.
    ///
    /// # Errors
    /// As [`TlsFiles::load`].
    pub fn reload(&self) -> Result<()> {
        let files = self
            .files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let config = files.load()?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// Loads other files (a settings file that names new paths), used from then on by new
    /// connections and by [`TlsState::reload`]. Files that do not load change nothing.
    ///
    /// # Errors
    /// As [`TlsFiles::load`].
    pub fn replace_files(&self, files: TlsFiles) -> Result<()> {
        let config = files.load()?;
        *self.files.write().unwrap_or_else(PoisonError::into_inner) = files;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
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

impl Handshake for TlsState {
    type Stream = TlsStream<TcpStream>;

    /// The handshake under the configuration in use when the connection was accepted.
    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = std::io::Result<TlsStream<TcpStream>>> + Send {
        self.acceptor().accept(tcp)
    }

    /// The certificate the client presented (verified by the handshake), for the API-key
    /// check: under mutual TLS a registered certificate can stand in for a bearer key.
    fn client_certificate(stream: &TlsStream<TcpStream>) -> Option<ClientCertificate> {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
            .map(|der| ClientCertificate::of_der(der))
    }
}

/// Re-reads the certificate, key and client CAs on SIGHUP (after a renewal).
pub fn reload_on_sighup(state: Arc<TlsState>) {
    crate::hangup::on_sighup("the TLS certificate", move || {
        state.reload().map(|()| "the TLS certificate".to_owned())
    });
}
