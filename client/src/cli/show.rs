//! Read commands and small write commands, and how they print.

use std::path::PathBuf;

use shoal_client::api::ControlClient;
use shoal_client::containerd;
use shoal_client::error::{ClientError, Result};
use shoal_proto::control::GcRequest;

use super::{print_json, Format};

/// `1.5 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub use shoal_proto::size::parse_size;

fn short(d: &shoal_proto::Digest) -> String {
    let s = d.to_string();
    s[..19.min(s.len())].to_owned()
}

fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if unix == 0 {
        return "never".into();
    }
    let secs = now.saturating_sub(unix);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

pub async fn status(c: &ControlClient, format: Format) -> Result<()> {
    let s = c.status().await?;
    if format == Format::Json {
        return print_json(&s);
    }
    println!("node       {}", s.node_id);
    println!("version    {}", s.version);
    println!("mirror     {}", s.mirror_addr);
    println!(
        "transfer   {}",
        s.transfer_addr.as_deref().unwrap_or("off (no swarm)")
    );
    for a in &s.p2p_addrs {
        println!("p2p        {a}");
    }
    println!("peers      {}", s.peers);
    let quota = if s.store_quota == 0 {
        "unlimited".to_owned()
    } else {
        bytes(s.store_quota)
    };
    println!("store      {} of {quota}", bytes(s.store_used));
    println!(
        "received   {} from peers, {} from origin; served {}",
        bytes(s.bytes_from_peers),
        bytes(s.bytes_from_origin),
        bytes(s.bytes_served)
    );
    if s.transfers.is_empty() {
        println!("transfers  none");
    }
    for t in &s.transfers {
        match t.size {
            Some(size) if size > 0 => println!(
                "transfer   {}  {} / {} ({:.0}%)",
                short(&t.digest),
                bytes(t.done),
                bytes(size),
                t.done as f64 * 100.0 / size as f64
            ),
            _ => println!("transfer   {}  starting", short(&t.digest)),
        }
    }
    Ok(())
}

pub async fn peers(c: &ControlClient, format: Format) -> Result<()> {
    let peers = c.peers().await?;
    if format == Format::Json {
        return print_json(&peers);
    }
    if peers.is_empty() {
        println!("no peers (is the swarm configured? see `shoal status`)");
    }
    for p in &peers {
        println!("{}  {}", p.node_id, p.transfer_addr);
    }
    Ok(())
}

pub async fn ls(c: &ControlClient, format: Format) -> Result<()> {
    let l = c.ls().await?;
    if format == Format::Json {
        return print_json(&l);
    }
    println!("MODELS");
    for m in &l.models {
        println!(
            "  {}  {}  {} / {}  {}{}",
            m.reference,
            short(&m.digest),
            bytes(m.present),
            bytes(m.size),
            if m.complete { "complete" } else { "incomplete" },
            if m.pinned { "  pinned" } else { "" }
        );
    }
    println!("BLOBS");
    for b in &l.blobs {
        println!(
            "  {}  {:>10}  {}{}  {}",
            short(&b.digest),
            bytes(b.size),
            ago(b.last_used),
            if b.pinned { "  pinned" } else { "" },
            b.media_type.as_deref().unwrap_or("")
        );
    }
    if !l.partial.is_empty() {
        println!("PARTIAL");
        for p in &l.partial {
            println!(
                "  {}  {} / {}",
                short(&p.digest),
                bytes(p.present),
                bytes(p.size)
            );
        }
    }
    Ok(())
}

pub async fn gc(c: &ControlClient, dry_run: bool, to: Option<u64>, format: Format) -> Result<()> {
    let r = c
        .gc(&GcRequest {
            dry_run,
            target: to,
        })
        .await?;
    if format == Format::Json {
        return print_json(&r);
    }
    let verb = if r.dry_run { "would evict" } else { "evicted" };
    for b in &r.evicted {
        println!(
            "{verb} {}  {}  last used {}",
            b.digest,
            bytes(b.size),
            ago(b.last_used)
        );
    }
    println!(
        "{verb} {} blobs, {}: {} -> {} (target {})",
        r.evicted.len(),
        bytes(r.used_before - r.used_after),
        bytes(r.used_before),
        bytes(r.used_after),
        bytes(r.target)
    );
    Ok(())
}

pub async fn pin(c: &ControlClient, reference: &str, pin: bool, format: Format) -> Result<()> {
    let r = if pin {
        c.pin(reference).await?
    } else {
        c.unpin(reference).await?
    };
    if format == Format::Json {
        return print_json(&r);
    }
    if pin {
        println!(
            "pinned {} ({}, {} blobs, {})",
            r.reference,
            r.digest,
            r.blobs.len(),
            bytes(r.bytes)
        );
    } else {
        println!(
            "unpinned {} ({} blobs, {} may now be evicted)",
            r.reference,
            r.blobs.len(),
            bytes(r.bytes)
        );
    }
    Ok(())
}

/// `shoal containerd-config` arguments.
#[derive(clap::Args)]
pub struct ContainerdConfigArgs {
    /// Registry to mirror through shoald (repeatable), e.g. docker.io, ghcr.io.
    #[arg(long = "registry", value_name = "HOST", required = true)]
    registries: Vec<String>,
    /// shoald's mirror URL as containerd on this node reaches it.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5050")]
    mirror: String,
    /// containerd's `config_path` for registry hosts.
    #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
    config_path: PathBuf,
    /// Put back what was there before shoal changed it.
    #[arg(long)]
    restore: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: Format,
}

pub fn containerd_config(args: &ContainerdConfigArgs) -> Result<()> {
    let mirror = args.mirror.trim_end_matches('/');
    if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
        return Err(ClientError::Usage(format!(
            "--mirror {mirror:?} must be an http:// or https:// URL"
        )));
    }
    let mut changes = Vec::new();
    for registry in &args.registries {
        changes.push(if args.restore {
            containerd::restore(&args.config_path, registry)?
        } else {
            containerd::apply(&args.config_path, registry, mirror)?
        });
    }
    if args.output == Format::Json {
        return print_json(&changes);
    }
    for c in &changes {
        println!("{}: {} {}", c.registry, c.action, c.path.display());
    }
    if !args.restore && changes.iter().any(|c| c.action != "unchanged") {
        println!(
            "containerd reads hosts.toml on every pull once its CRI registry config_path is {}; no restart needed after that",
            args.config_path.display()
        );
    }
    Ok(())
}
