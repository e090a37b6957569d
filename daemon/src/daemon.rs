//! Wiring: opens the store, builds the upstream client and serves the mirror.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::mirror::{self, Mirror};
use crate::store::{Store, StoreError};
use crate::swarm::{Downloads, PeerNetwork};
use crate::upstream::{Credentials, Upstream, UpstreamError, UpstreamOptions};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The content store could not be opened.
    #[error("opening content store in {path}: {source}")]
    Store {
        /// Data directory.
        path: std::path::PathBuf,
        /// Cause.
        source: StoreError,
    },
    /// Upstream client setup failed (e.g. unreadable credentials).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Identity, secret or transfer endpoint setup failed.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// Options that do not work together.
    #[error("{0}")]
    Config(String),
    /// The mirror address could not be bound.
    #[error("binding mirror address {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A started daemon.
pub struct Daemon {
    /// Where the mirror listens (useful with port 0).
    pub mirror_addr: SocketAddr,
    /// This node's PeerId.
    pub peer_id: libp2p_identity::PeerId,
    /// The peer transfer endpoint, when enabled.
    pub transfer: Option<Arc<crate::net::transfer::Transfer>>,
    listener: tokio::net::TcpListener,
    router: axum::Router,
}

impl Daemon {
    /// Opens the store (reconciling its index) and binds the mirror address.
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        let credentials = match &config.credentials {
            Some(p) => Credentials::load(p)?,
            None => Credentials::default(),
        };
        let upstream = Arc::new(Upstream::new(UpstreamOptions {
            insecure: config.insecure_registry.clone(),
            credentials,
            timeout: config.upstream_timeout,
            retries: config.upstream_retries,
        })?);
        let (data_dir, chunk_size, quota) = (
            config.data_dir.clone(),
            config.chunk_size as u32,
            config.max_disk,
        );
        let store = tokio::task::spawn_blocking(move || Store::open(&data_dir, chunk_size, quota))
            .await
            .map_err(|e| StartError::Store {
                path: config.data_dir.clone(),
                source: StoreError::io("opening store", std::io::Error::other(e)),
            })?
            .map_err(|source| StartError::Store {
                path: config.data_dir.clone(),
                source,
            })?;
        let store = Arc::new(store);
        let keypair = crate::net::identity::load_or_create(&config.data_dir)?;
        let peer_id = keypair.public().to_peer_id();
        let transfer = match config.transfer_addr {
            Some(addr) => {
                let secret = match &config.cluster_secret_file {
                    Some(p) => crate::net::identity::read_secret(p)?,
                    None => {
                        tracing::warn!("NO CLUSTER SECRET: any host that can reach the transfer port can fetch this node's blobs; set --cluster-secret-file");
                        Vec::new()
                    }
                };
                let options = crate::net::transfer::TransferOptions {
                    secret,
                    max_uploads: config.max_uploads,
                    max_upload_rate: config.max_upload_rate,
                    max_download_rate: config.max_download_rate,
                };
                let t = crate::net::transfer::Transfer::bind(
                    addr,
                    keypair.clone(),
                    options,
                    store.clone(),
                )?;
                tracing::info!(%peer_id, transfer = %t.local_addr()?, "serving chunks to peers");
                Some(t)
            }
            None => None,
        };
        let network = match (&transfer, config.p2p_addr) {
            (Some(transfer), Some(listen)) => {
                let options = crate::net::discovery::DiscoveryOptions {
                    listen,
                    advertise_ip: config.advertise_addr,
                    bootstrap: config.bootstrap.clone(),
                    mdns: config.mdns,
                    transfer: transfer.local_addr()?,
                    provider_ttl: config.provider_ttl,
                };
                let discovery =
                    crate::net::discovery::Discovery::start(keypair.clone(), options).await?;
                Some(PeerNetwork {
                    transfer: transfer.clone(),
                    discovery,
                })
            }
            (None, Some(_)) => {
                return Err(StartError::Config(
                    "--p2p-addr needs --transfer-addr".into(),
                ))
            }
            _ => None,
        };
        let metrics = Arc::new(Metrics::default());
        let mirror = Arc::new(Mirror {
            downloads: Downloads::new(store.clone(), upstream.clone(), metrics.clone(), network),
            store,
            upstream,
            metrics,
            default_upstream: config.default_upstream.clone(),
            tag_ttl: config.tag_ttl,
            stale_if_error: config.stale_if_error,
        });
        let listener = tokio::net::TcpListener::bind(config.mirror_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.mirror_addr,
                source,
            })?;
        let mirror_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.mirror_addr,
            source,
        })?;
        Ok(Daemon {
            mirror_addr,
            peer_id,
            transfer,
            listener,
            router: mirror::router(mirror),
        })
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
