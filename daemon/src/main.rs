//! `shoald` entry point: configuration, logging, signals.

use anyhow::Context as _;
use shoal_daemon::config::{Config, LogFormat};
use shoal_daemon::daemon::Daemon;
use tracing_subscriber::EnvFilter;

fn main() {
    return_big_buffers_to_the_os();
    let config = match Config::load_from(std::env::args_os()) {
        Ok(c) => c,
        Err(shoal_daemon::config::ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("shoald: {e}");
            std::process::exit(2);
        }
    };
    init_logging(config.log_format);
    if let Err(e) = run(config) {
        tracing::error!("{e:#}");
        eprintln!("shoald: {e:#}");
        std::process::exit(1);
    }
}

/// Chunk buffers of megabytes come and go by the hundred per second. glibc's default raises
/// its mmap threshold after the first such buffer is freed and from then on recycles
/// them inside its arenas, which never shrink back: peak RSS 156-168 MiB against 116 MiB
/// with a fixed 256 KiB threshold in the 8-node swarm benchmark (benches/RESULTS.md;
/// mimalloc measured 256-264 MiB). Buffers at or above the threshold are mapped and
/// unmapped each time instead.
fn return_big_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable, and runs before any other thread
    // exists. A refusal (return value 0) leaves glibc's default, which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal: journald, `kubectl logs` and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = builder.build().context("starting the async runtime")?;
    runtime.block_on(async {
        let daemon = Daemon::start(&config).await?;
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::info!(mirror = %daemon.mirror_addr, peer_id = %daemon.peer_id, data_dir = %config.data_dir.display(), workers, "shoald listening");
        daemon.serve(shutdown_signal()).await.context("serving the mirror")?;
        tracing::info!("shoald stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down; finishing in-flight requests");
}
