//! Prometheus metrics, served at `/metrics` on the mirror address.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `shoal_http_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route kind (`blob`, `manifest`, ...).
    pub route: &'static str,
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// What was looked up in the store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ContentKind {
    /// A blob (layer, config).
    Blob,
    /// A manifest.
    Manifest,
}

/// Labels of the cache hit/miss counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Blob or manifest.
    pub kind: ContentKind,
}

/// All metrics of one daemon.
pub struct Metrics {
    registry: Registry,
    /// Mirror requests by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Bytes of blob and manifest bodies sent to local clients.
    pub served_bytes: Counter,
    /// Blob bytes received from upstream registries.
    pub upstream_bytes: Counter,
    /// Blob bytes received from peers (verified or not yet verifiable).
    pub peer_bytes: Counter,
    /// Peer chunk fetches refused because the bytes failed the chunk index.
    pub peer_bad_chunks: Counter,
    /// Lists of interested nodes received from peers in cold starts
    /// (`Message::Interested`), which widen each node's view for the origin assignment.
    pub interested_lists: Counter,
    /// Lookups answered from the store.
    pub cache_hits: Family<KindLabels, Counter>,
    /// Lookups that needed a fetch.
    pub cache_misses: Family<KindLabels, Counter>,
    /// Bytes in the content store (set at scrape time).
    pub store_bytes: Gauge,
    /// Datagrams the kernel dropped at the peer-transfer socket (full receive buffer),
    /// as last read by [`Metrics::record_transfer_drops`].
    pub transfer_receive_drops: Counter,
    /// What this node's peers may have in flight towards it, as last read (every 10 s).
    pub transfer_receive_budget: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let m = Metrics {
            requests: Family::default(),
            served_bytes: Counter::default(),
            upstream_bytes: Counter::default(),
            peer_bytes: Counter::default(),
            peer_bad_chunks: Counter::default(),
            interested_lists: Counter::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            store_bytes: Gauge::default(),
            transfer_receive_drops: Counter::default(),
            transfer_receive_budget: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "Mirror HTTP requests", m.requests.clone());
        registry.register(
            "served_bytes",
            "Bytes sent to local clients",
            m.served_bytes.clone(),
        );
        registry.register(
            "upstream_bytes",
            "Blob bytes received from upstream registries",
            m.upstream_bytes.clone(),
        );
        registry.register(
            "peer_bytes",
            "Blob bytes received from peers",
            m.peer_bytes.clone(),
        );
        registry.register(
            "peer_bad_chunks",
            "Chunks from peers that failed verification",
            m.peer_bad_chunks.clone(),
        );
        registry.register(
            "interested_lists",
            "Lists of interested nodes received from peers during cold starts",
            m.interested_lists.clone(),
        );
        registry.register(
            "cache_hits",
            "Lookups answered from the local store",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Lookups that needed a fetch",
            m.cache_misses.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes held in the content store",
            m.store_bytes.clone(),
        );
        registry.register(
            "transfer_receive_drops",
            "Datagrams the kernel dropped at the peer-transfer socket because its receive \
             buffer was full (raise net.core.rmem_max)",
            m.transfer_receive_drops.clone(),
        );
        registry.register(
            "transfer_receive_budget_bytes",
            "Bytes this node's peers may have in flight towards it, all together \
             (--receive-budget, grown on fast links)",
            m.transfer_receive_budget.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a store hit or miss.
    pub fn lookup(&self, kind: ContentKind, hit: bool) {
        let family = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        family.get_or_create(&KindLabels { kind }).inc();
    }

    /// Sets the transfer-socket drop counter to the kernel's `total` (it never goes
    /// back) and returns how many drops are new since the last call.
    pub fn record_transfer_drops(&self, total: u64) -> u64 {
        let before = self
            .transfer_receive_drops
            .inner()
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
        total.saturating_sub(before)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
