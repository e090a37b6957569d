//! shoal benchmarks. The benchmark programs live in `benches/` and `src/bin/`; see
//! `benches/RESULTS.md`. This library holds what they share.

/// Deterministic incompressible bytes (xorshift), fast enough for gigabytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Pushes one blob to `registry` (`host:port`, plain HTTP) with a monolithic upload;
/// returns its digest.
pub async fn push_blob(
    client: &reqwest::Client,
    registry: &str,
    repo: &str,
    bytes: Vec<u8>,
) -> Result<String, String> {
    use sha2::Digest as _;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    let r = client
        .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| format!("starting upload: {e}"))?;
    if r.status() != 202 {
        return Err(format!("starting upload: {}", r.status()));
    }
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("upload without Location")?
        .to_owned();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{registry}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = client
        .put(format!("{loc}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .map_err(|e| format!("uploading {digest}: {e}"))?;
    if r.status() != 201 {
        return Err(format!("uploading {digest}: {}", r.status()));
    }
    Ok(digest)
}

/// Parses a tc-style rate (`200mbit`, `1gbit`, `500kbit`) into bytes per second.
pub fn rate_bytes_per_sec(rate: &str) -> Result<f64, String> {
    let r = rate.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = r.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = r.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = r.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        return Err(format!("rate {rate:?}: use kbit, mbit or gbit"));
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("rate {rate:?} is not a number"))?;
    Ok(n * mult / 8.0)
}
