//! Each container instance's own mutual-TLS Docker listener (`--all-instances`): on the
//! instance's private and public address, port 2376, as dockerd listens on a real instance.
//! The stand-in has one dockerd, so each listener is a TLS front for its Unix socket: it
//! presents the fleet server certificate ($STATE/certs/server.pem, valid for every address of
//! 127.0.0.0/24), accepts only clients whose certificate chains to client-ca.pem (as dockerd's
//! `--tlsverify`), and passes bytes through both ways (HTTP, hijacked exec streams, all alike).
//!
//! An instance that is lost or deregistered has its listeners closed and every connection
//! through them cut at once: a Docker client of a terminated host loses its connection, and a
//! new one is refused. With `Lost::Hang` the connections are not closed but go silent instead
//! (nothing passes either way, the socket stays open), as a client sees a host that vanished
//! without a word: only something other than the connection can tell it the host is gone. Addresses dockerd already listens on (the first instance's 127.0.0.1
//! and 127.0.0.2) stay dockerd's: binding them fails and they are left alone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::action_log::say;

/// What a lost instance's open Docker connections do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Closed at once (the client reads an end or a reset).
    Cut,
    /// Kept open, silent, for `HANG_FOR` (the client waits for bytes that never come).
    Hang,
}

/// How long a silent connection of a lost instance is held open.
const HANG_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// The server side of Docker's mutual TLS, from the stand-in's certificate directory.
pub fn server_config(dir: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let read = |name: &str| -> anyhow::Result<Vec<u8>> {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("Docker TLS listeners need {}", path.display()))
    };
    let (ca, cert, key) = (read("client-ca.pem")?, read("server.pem")?, read("server-key.pem")?);
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(c.context("client-ca.pem")?)
            .context("client-ca.pem: not a usable CA certificate")?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{}: no certificate",
        dir.join("client-ca.pem").display()
    );
    let certs = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .context("server.pem")?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate",
        dir.join("server.pem").display()
    );
    let key = PrivateKeyDer::from_pem_slice(&key).context("server-key.pem")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("client certificate verifier")?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("server.pem and server-key.pem")?;
    Ok(Arc::new(config))
}

/// The listeners of every served instance.
pub struct Listeners {
    acceptor: TlsAcceptor,
    socket: PathBuf,
    port: u16,
    lost: Lost,
    open: HashMap<String, InstanceListeners>,
}

/// One instance's listeners. Dropping it closes them and cuts their connections.
struct InstanceListeners {
    addresses: Vec<IpAddr>,
    /// Addresses not (yet) bound: in use by dockerd, or by a lost instance's listener that is
    /// still closing. Tried again on every `serve`.
    unbound: Vec<IpAddr>,
    /// Addresses whose bind failure was logged already.
    told: Vec<IpAddr>,
    /// Dropped: every listener and connection of the instance ends.
    _alive: watch::Sender<()>,
    alive: watch::Receiver<()>,
}

impl Listeners {
    pub fn new(config: Arc<ServerConfig>, socket: PathBuf, port: u16, lost: Lost) -> Listeners {
        Listeners {
            acceptor: TlsAcceptor::from(config),
            socket,
            port,
            lost,
            open: HashMap::new(),
        }
    }

    /// Listen for instance `arn` on `addresses` (again on those not bound yet).
    pub async fn serve(&mut self, arn: &str, addresses: &[IpAddr]) {
        let entry = self.open.entry(arn.to_string()).or_insert_with(|| {
            let (tx, rx) = watch::channel(());
            InstanceListeners {
                addresses: addresses.to_vec(),
                unbound: addresses.to_vec(),
                told: Vec::new(),
                _alive: tx,
                alive: rx,
            }
        });
        let mut still = Vec::new();
        for ip in std::mem::take(&mut entry.unbound) {
            let at = SocketAddr::new(ip, self.port);
            match TcpListener::bind(at).await {
                Ok(listener) => {
                    say!("container instance {arn}: Docker listens with mutual TLS on {at}");
                    tokio::spawn(accept_loop(
                        listener,
                        (self.acceptor.clone(), self.socket.clone(), self.lost),
                        entry.alive.clone(),
                    ));
                }
                Err(e) => {
                    if !entry.told.contains(&ip) {
                        say!("container instance {arn}: cannot listen on {at} ({e}); trying again every second");
                        entry.told.push(ip);
                    }
                    still.push(ip);
                }
            }
        }
        entry.unbound = still;
    }

    /// Close instance `arn`'s listeners and cut every connection through them.
    pub fn close(&mut self, arn: &str) {
        if let Some(l) = self.open.remove(arn) {
            let at: Vec<String> = l.addresses.iter().map(|ip| format!("{ip}:{}", self.port)).collect();
            let what = match self.lost {
                Lost::Cut => "their connections cut",
                Lost::Hang => "their connections silent",
            };
            say!(
                "container instance {arn} is gone: its Docker listeners ({}) are closed and {what}",
                at.join(", ")
            );
        }
    }

    /// The instances being listened for.
    pub fn instances(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }
}

async fn accept_loop(
    listener: TcpListener,
    (acceptor, socket, lost): (TlsAcceptor, PathBuf, Lost),
    mut alive: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                tokio::spawn(connection(client, acceptor.clone(), socket.clone(), lost, alive.clone()));
            }
            // The sender is dropped: the instance is gone. Dropping the listener closes it.
            _ = alive.changed() => return,
        }
    }
}

/// One client: the TLS handshake (a client without a certificate of the client CA is
/// refused by it), then bytes both ways to dockerd's socket until either side ends — or the
/// instance goes, which drops dockerd's side and cuts the client's or leaves it silent.
async fn connection(
    client: TcpStream,
    acceptor: TlsAcceptor,
    socket: PathBuf,
    lost: Lost,
    mut alive: watch::Receiver<()>,
) {
    let _ = client.set_nodelay(true);
    let Ok(mut tls) = acceptor.accept(client).await else {
        return;
    };
    let Ok(mut docker) = UnixStream::connect(&socket).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut tls, &mut docker) => return,
        _ = alive.changed() => {}
    }
    drop(docker);
    if lost == Lost::Hang {
        tokio::time::sleep(HANG_FOR).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_certificates_are_named() {
        let dir = std::env::temp_dir().join(format!("agent-no-certs-{}", std::process::id()));
        let err = server_config(&dir).unwrap_err();
        assert!(format!("{err:#}").contains("client-ca.pem"), "{err:#}");
    }
}
