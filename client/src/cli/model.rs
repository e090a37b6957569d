//! Commands that move a whole model: pull (and extract), preheat, export, import.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shoal_client::api::ControlClient;
use shoal_client::error::{ClientError, Result};
use shoal_client::extract::{kind, Extractor, Filter, LayerOutcome};
use shoal_client::layout::{self, LayoutPath};
use shoal_client::registry::MirrorClient;
use shoal_proto::control::{NodePreheat, PreheatRequest, PreheatState};
use shoal_proto::oci::{Descriptor, Platform, Reference};

use super::show::bytes;
use super::{print_json, Format};

/// Layers fetched at once (containerd's default is 3).
const PARALLEL_LAYERS: usize = 3;

/// Progress per item: bars on a terminal, one line per finished item otherwise.
struct Progress {
    multi: Option<MultiProgress>,
}

struct Item {
    bar: Option<ProgressBar>,
    name: String,
    size: u64,
    started: Instant,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            multi: (terminal && !quiet).then(MultiProgress::new),
        }
    }

    fn item(&self, name: String, size: u64) -> Item {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(size));
            let style = ProgressStyle::with_template(
                "{prefix:40!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(name.clone());
            bar
        });
        Item {
            bar,
            name,
            size,
            started: Instant::now(),
        }
    }
}

impl Item {
    fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn finish(&self, what: &str) {
        match &self.bar {
            Some(b) => b.finish_with_message(what.to_owned()),
            None => eprintln!(
                "{}: {what} ({}, {:.1}s)",
                self.name,
                bytes(self.size),
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}

fn parse_reference(s: &str) -> Result<Reference> {
    s.parse()
        .map_err(|e: shoal_proto::oci::ReferenceError| ClientError::Usage(e.to_string()))
}

fn parse_platform(s: &Option<String>) -> Result<Option<Platform>> {
    s.as_deref()
        .map(|p| p.parse().map_err(ClientError::Usage))
        .transpose()
}

async fn mirror(c: &ControlClient) -> Result<MirrorClient> {
    let status = c.status().await?;
    MirrorClient::new(c.mirror_base(&status)?)
}

fn layer_name(layer: &Descriptor) -> String {
    kind::plan(layer)
        .and_then(|p| p.path)
        .or_else(|| {
            layer
                .annotations
                .get("org.opencontainers.image.title")
                .cloned()
        })
        .unwrap_or_else(|| layer.digest.to_string()[7..19].to_owned())
}

/// `shoal pull` arguments.
#[derive(clap::Args)]
pub struct PullArgs {
    /// Image or model reference, e.g. `ghcr.io/org/model:v1`.
    reference: String,
    /// Write the model's files into DIR (resumable; verified files are skipped).
    #[arg(long, value_name = "DIR")]
    extract: Option<PathBuf>,
    /// Only files matching this glob (repeatable), e.g. `*.safetensors`.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip files matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Platform to pick from a multi-platform index (`os/arch[/variant]`; default: this host's).
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Output format of the summary.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: Format,
}

#[derive(serde::Serialize)]
struct PulledLayer {
    digest: String,
    media_type: String,
    size: u64,
    name: String,
    outcome: LayerOutcome,
}

pub async fn pull(c: &ControlClient, args: &PullArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let platform = parse_platform(&args.platform)?.unwrap_or_else(Platform::host);
    let mirror = mirror(c).await?;
    let resolved = mirror.resolve(&reference, Some(&platform)).await?;
    let extractor = match &args.extract {
        Some(dir) => Some(Extractor::open(
            dir,
            Filter::new(&args.include, &args.exclude)?,
        )?),
        None => None,
    };
    let progress = Progress::new(args.output == Format::Json);
    let mut pulled = Vec::new();
    for manifest in &resolved.manifests {
        // Configs are fetched (the node caches the whole model) but hold no files.
        let mut work: Vec<(Descriptor, bool)> = manifest
            .manifest
            .config
            .iter()
            .map(|d| (d.clone(), false))
            .collect();
        work.extend(manifest.manifest.layers.iter().map(|d| (d.clone(), true)));
        // Image layers apply in order (whiteouts); model files are independent.
        let ordered = manifest
            .manifest
            .layers
            .iter()
            .any(|l| kind::plan(l).is_some_and(|p| p.image_layer));
        let parallel = if ordered { 1 } else { PARALLEL_LAYERS };
        let results: Vec<Result<PulledLayer>> = futures::stream::iter(work)
            .map(|(layer, is_layer)| {
                let (mirror, reference, extractor, progress) =
                    (&mirror, &reference, extractor.as_ref(), &progress);
                async move {
                    let name = if is_layer {
                        layer_name(&layer)
                    } else {
                        "config".to_owned()
                    };
                    let item = progress.item(name.clone(), layer.size);
                    let outcome = match extractor.filter(|_| is_layer) {
                        Some(x) => {
                            let advance = |n: u64| item.advance(n);
                            let o = x.layer(mirror, reference, &layer, &advance).await?;
                            if o == LayerOutcome::NoFiles {
                                drain(mirror, reference, &layer, &item).await?;
                            }
                            o
                        }
                        None => {
                            drain(mirror, reference, &layer, &item).await?;
                            LayerOutcome::Extracted
                        }
                    };
                    item.finish(match outcome {
                        LayerOutcome::Extracted if extractor.is_some() && is_layer => "extracted",
                        LayerOutcome::Extracted | LayerOutcome::NoFiles => "pulled",
                        LayerOutcome::AlreadyPresent => "already present, verified",
                        LayerOutcome::Filtered => "skipped by filter",
                    });
                    Ok(PulledLayer {
                        digest: layer.digest.to_string(),
                        media_type: layer.media_type.clone(),
                        size: layer.size,
                        name,
                        outcome,
                    })
                }
            })
            .buffered(parallel)
            .collect()
            .await;
        for r in results {
            pulled.push(r?);
        }
    }
    let total: u64 = pulled.iter().map(|l| l.size).sum();
    if args.output == Format::Json {
        return print_json(&serde_json::json!({
            "reference": reference.to_string(),
            "digest": resolved.top.digest.to_string(),
            "extracted_to": extractor.as_ref().map(|x| x.root().display().to_string()),
            "bytes": total,
            "layers": pulled,
        }));
    }
    match &extractor {
        Some(x) => println!(
            "{reference}: {} in {} blobs, files in {}",
            bytes(total),
            pulled.len(),
            x.root().display()
        ),
        None => println!(
            "{reference}: {} in {} blobs pulled",
            bytes(total),
            pulled.len()
        ),
    }
    Ok(())
}

/// Reads a blob through the mirror and drops it: the node now has it cached.
async fn drain(
    mirror: &MirrorClient,
    reference: &Reference,
    blob: &Descriptor,
    item: &Item,
) -> Result<()> {
    let resp = mirror.blob(reference, &blob.digest).await?;
    let mut body = resp.bytes_stream();
    let mut got = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| {
            ClientError::Other(format!("{}: download interrupted: {e}", blob.digest))
        })?;
        got += piece.len() as u64;
        item.advance(piece.len() as u64);
    }
    if got != blob.size {
        return Err(ClientError::Refused(format!(
            "{}: got {got} bytes, the manifest says {}",
            blob.digest, blob.size
        )));
    }
    Ok(())
}

/// `shoal preheat` arguments.
#[derive(clap::Args)]
pub struct PreheatArgs {
    /// Image or model reference.
    reference: String,
    /// Node ids to preheat (comma-separated; see `shoal peers`). Default: this node.
    #[arg(
        long,
        value_name = "ID,...",
        value_delimiter = ',',
        conflicts_with = "all"
    )]
    nodes: Vec<String>,
    /// This node and every peer it knows.
    #[arg(long)]
    all: bool,
    /// Give up waiting after this long (the nodes keep fetching).
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Output format of the final report.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: Format,
}

pub async fn preheat(c: &ControlClient, args: &PreheatArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?.to_string();
    let started = Instant::now();
    let mut request = PreheatRequest {
        reference: reference.clone(),
        nodes: args.nodes.clone(),
        all: args.all,
    };
    let progress = Progress::new(args.output == Format::Json);
    let mut nodes: BTreeMap<String, NodePreheat> = BTreeMap::new();
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    loop {
        let report = c.preheat(&request).await?;
        for n in report.nodes {
            let item = items
                .entry(n.node_id.clone())
                .or_insert_with(|| progress.item(n.node_id.clone(), 0));
            if let Some(b) = &item.bar {
                b.set_length(n.total);
                b.set_position(n.done);
            }
            item.size = n.total;
            if n.state.is_final() {
                item.finish(match n.state {
                    PreheatState::Done => "done",
                    PreheatState::Failed => "failed",
                    _ => "unreachable",
                });
            }
            nodes.insert(n.node_id.clone(), n);
        }
        let pending: Vec<String> = nodes
            .values()
            .filter(|n| !n.state.is_final())
            .map(|n| n.node_id.clone())
            .collect();
        if pending.is_empty() {
            break;
        }
        if started.elapsed() >= args.timeout {
            return Err(ClientError::Timeout(format!(
                "preheat of {reference} not done on {} node(s) after {}; they keep fetching (run again to watch)",
                pending.len(),
                humantime::format_duration(args.timeout)
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        request = PreheatRequest {
            reference: reference.clone(),
            nodes: pending,
            all: false,
        };
    }
    let failed: Vec<&NodePreheat> = nodes
        .values()
        .filter(|n| n.state != PreheatState::Done)
        .collect();
    if args.output == Format::Json {
        print_json(&nodes.values().collect::<Vec<_>>())?;
    } else {
        for n in nodes.values() {
            println!(
                "{}  {:?}  {}{}",
                n.node_id,
                n.state,
                bytes(n.total),
                n.error
                    .as_deref()
                    .map(|e| format!("  {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ClientError::Other(format!(
            "preheat of {reference} failed on {} of {} nodes",
            failed.len(),
            nodes.len()
        )))
    }
}

/// `shoal export` arguments.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Image or model reference.
    reference: String,
    /// A directory, or a file ending in `.tar`.
    #[arg(long, short = 'o', value_name = "DIR|FILE.tar")]
    output: PathBuf,
    /// Export one platform of a multi-platform index (default: every platform).
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
}

pub async fn export(c: &ControlClient, args: &ExportArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let platform = parse_platform(&args.platform)?;
    let mirror = mirror(c).await?;
    let mut resolved = mirror.resolve(&reference, platform.as_ref()).await?;
    if platform.is_some() && resolved.manifests.len() == 1 {
        // The layout names the platform's manifest itself, not the whole index.
        resolved.top = resolved.manifests[0].clone();
    }
    let total: u64 = resolved
        .manifests
        .iter()
        .flat_map(|m| m.manifest.blobs())
        .map(|d| d.size)
        .sum();
    let progress = Progress::new(false);
    let item = progress.item(reference.to_string(), total);
    let advance = |n: u64| item.advance(n);
    let out = LayoutPath::new(&args.output);
    let report = layout::export(&mirror, &reference, &resolved, &out, &advance).await?;
    item.finish("exported");
    println!(
        "exported {} ({}, {} blobs, {}) to {}",
        report.reference,
        report.digest,
        report.blobs,
        bytes(report.bytes),
        args.output.display()
    );
    Ok(())
}

/// `shoal import` arguments.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// An OCI image layout: a directory, or a `.tar` of one.
    path: PathBuf,
    /// Record the image under this reference (default: the layout's
    /// `io.containerd.image.name` / `org.opencontainers.image.ref.name`).
    #[arg(long, value_name = "REF")]
    name: Option<String>,
    /// Output format of the summary.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: Format,
}

pub async fn import(c: &ControlClient, args: &ImportArgs) -> Result<()> {
    let name = args.name.as_deref().map(parse_reference).transpose()?;
    let progress = Progress::new(args.output == Format::Json);
    let item = progress.item(args.path.display().to_string(), 0);
    let advance = |n: u64| item.advance(n);
    let report = layout::import(c, &LayoutPath::new(&args.path), name.as_ref(), &advance).await?;
    item.finish("imported");
    if args.output == Format::Json {
        return print_json(&report);
    }
    println!(
        "imported {} blobs ({}), {} already present",
        report.uploaded,
        bytes(report.bytes),
        report.present
    );
    if report.tags.is_empty() {
        println!("no reference recorded: the layout names none; pass --name REF");
    }
    for t in &report.tags {
        println!("tagged {t}");
    }
    Ok(())
}
