//! Wiring: opens the store, builds the upstream client and serves the mirror.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::control::{self, Control};
use crate::metrics::Metrics;
use crate::mirror::prefetch::Prefetch;
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
    /// The control socket or address could not be set up.
    #[error("control API on {at}: {source}")]
    Control {
        /// Socket path or address.
        at: String,
        /// Cause.
        source: std::io::Error,
    },
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
    /// The control API's unix socket.
    pub control_socket: std::path::PathBuf,
    /// The control API's TCP address, when enabled.
    pub control_addr: Option<SocketAddr>,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    control_unix: tokio::net::UnixListener,
    control_tcp: Option<(tokio::net::TcpListener, axum::Router)>,
    control_router: axum::Router,
    ops: Option<(tokio::net::TcpListener, axum::Router)>,
    shutdown_grace: std::time::Duration,
    metrics: Arc<Metrics>,
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
                    receive_budget: config.receive_budget,
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
        let mut control_network = None;
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
                control_network = Some((transfer.clone(), discovery.clone()));
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
        let downloads = Downloads::new(store.clone(), upstream.clone(), metrics.clone(), network);
        let mirror = Arc::new(Mirror {
            downloads: downloads.clone(),
            store: store.clone(),
            upstream,
            metrics: metrics.clone(),
            default_upstream: config.default_upstream.clone(),
            tag_ttl: config.tag_ttl,
            stale_if_error: config.stale_if_error,
            prefetch: Prefetch::new(config.prefetch),
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
        let ops = match config.metrics_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                Some((listener, mirror::ops_router(mirror.clone())))
            }
            None => None,
        };
        let control = Arc::new(Control::new(
            store,
            downloads,
            metrics.clone(),
            control_network,
            peer_id.to_string(),
            mirror_addr,
            config.default_upstream.clone(),
        ));
        let control_socket = config.control_socket_path();
        let control_unix = bind_control_socket(&control_socket)?;
        let control_tcp = match config.control_addr {
            Some(addr) => {
                let token = match &config.cluster_secret_file {
                    Some(p) => Some(
                        String::from_utf8(crate::net::identity::read_secret(p)?).map_err(|_| {
                            StartError::Config(
                                "--control-addr uses the cluster secret as a bearer token, so it must be text".into(),
                            )
                        })?,
                    ),
                    None if addr.ip().is_loopback() => None,
                    None => {
                        return Err(StartError::Config(format!(
                            "--control-addr {addr} is not loopback: set --cluster-secret-file so clients must present it"
                        )))
                    }
                };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Control {
                        at: addr.to_string(),
                        source,
                    })?;
                Some((listener, control::router(control.clone(), token)))
            }
            None => None,
        };
        let control_addr = match &control_tcp {
            Some((l, _)) => l.local_addr().ok(),
            None => None,
        };
        Ok(Daemon {
            mirror_addr,
            peer_id,
            transfer,
            control_socket,
            control_addr,
            listener,
            router: mirror::router(mirror),
            control_unix,
            control_tcp,
            control_router: control::router(control, None),
            ops,
            shutdown_grace: config.shutdown_grace,
            metrics,
        })
    }

    /// Serves the mirror and the control API until `shutdown` resolves; then finishes
    /// in-flight requests and peer uploads (at most `--shutdown-grace`).
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let until_stopped = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let control_unix = axum::serve(self.control_unix, self.control_router)
            .with_graceful_shutdown(until_stopped());
        let optional = |server: Option<(tokio::net::TcpListener, axum::Router)>| {
            let stop = until_stopped();
            async move {
                match server {
                    Some((listener, router)) => {
                        axum::serve(listener, router)
                            .with_graceful_shutdown(stop)
                            .await
                    }
                    None => Ok(()),
                }
            }
        };
        let control_tcp = optional(self.control_tcp);
        let ops = optional(self.ops);
        let grace = self.shutdown_grace;
        let transfer = self.transfer.clone();
        let drain_signal = until_stopped();
        let drain = async move {
            drain_signal.await;
            if let Some(t) = transfer {
                t.drain(grace).await;
            }
            Ok::<(), std::io::Error>(())
        };
        let mirror =
            axum::serve(self.listener, self.router).with_graceful_shutdown(until_stopped());
        let drops = watch_transfer_drops(self.transfer.clone(), self.metrics, until_stopped());
        let buffers = release_idle_buffers(until_stopped());
        let serving = async {
            tokio::try_join!(
                mirror,
                control_unix,
                control_tcp,
                ops,
                drain,
                drops,
                buffers
            )
            .map(|_| ())
        };
        // A client still reading a blob after the grace period is cut off.
        let deadline = async {
            until_stopped().await;
            tokio::time::sleep(grace + std::time::Duration::from_secs(1)).await;
        };
        let result = tokio::select! {
            r = serving => r,
            () = deadline => {
                tracing::warn!("requests still running after the shutdown grace; exiting");
                Ok(())
            }
        };
        let _ = std::fs::remove_file(&self.control_socket);
        result
    }
}

/// How long a buffer pool may go without lending before its idle buffers are freed.
const BUFFER_IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// Frees the pooled chunk buffers (`crate::buffers`) of pools that went a
/// [`BUFFER_IDLE_RELEASE`] period without use, until `stop`: up to 48 MiB that a
/// daemon between pulls has no use for.
async fn release_idle_buffers(stop: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    let release = async {
        let mut tick = tokio::time::interval(BUFFER_IDLE_RELEASE);
        loop {
            tick.tick().await;
            let freed = crate::buffers::release_idle();
            if freed > 0 {
                tracing::debug!(freed, "released idle chunk buffers");
            }
        }
    };
    run_until(stop, release).await
}

/// Runs a periodic task (a loop that never ends) until `stop`.
async fn run_until(
    stop: impl std::future::Future<Output = ()>,
    task: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::select! {
        () = stop => {}
        () = task => {}
    }
    Ok(())
}

/// How often the transfer socket's drop count and receive budget are read into the
/// metrics.
const DROP_CHECK: std::time::Duration = std::time::Duration::from_secs(10);
/// At most one warning this often while the kernel keeps dropping datagrams.
const DROP_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Reads the transfer socket's drops and receive budget into the metrics until `stop`,
/// and warns while the kernel drops datagrams there: transfers then slow down, and
/// `net.core.rmem_max` is usually why (the socket could not get the buffer it asked for).
async fn watch_transfer_drops(
    transfer: Option<Arc<crate::net::transfer::Transfer>>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let Some(transfer) = transfer else {
        return Ok(());
    };
    let watch = async {
        let mut tick = tokio::time::interval(DROP_CHECK);
        let mut unreported = 0u64;
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            metrics
                .transfer_receive_budget
                .set(i64::try_from(transfer.receive_budget()).unwrap_or(i64::MAX));
            let Some(total) = transfer.receive_drops() else {
                continue;
            };
            unreported += metrics.record_transfer_drops(total);
            let due = match last_warning {
                Some(at) => at.elapsed() >= DROP_WARNING_EVERY,
                None => true,
            };
            if unreported > 0 && due {
                tracing::warn!(
                    dropped = unreported,
                    total,
                    "the kernel dropped datagrams at the transfer socket (receive buffer \
                     full); peer transfers slow down. Raise net.core.rmem_max (deploy/README.md)"
                );
                unreported = 0;
                last_warning = Some(tokio::time::Instant::now());
            }
        }
    };
    run_until(stop, watch).await
}

/// Binds the control socket, replacing a stale one a crashed daemon left, but never
/// one a running daemon still answers on.
fn bind_control_socket(path: &std::path::Path) -> Result<tokio::net::UnixListener, StartError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| StartError::Control {
        at: path.display().to_string(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another shoald is listening there (use another --data-dir or --control-socket)",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}
