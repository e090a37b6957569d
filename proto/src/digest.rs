//! OCI content digests.
//!
//! Only `sha256` is accepted: it is the algorithm every registry must support and the
//! one the content store is keyed by. Other well-formed algorithms are rejected with
//! [`DigestError::UnsupportedAlgorithm`] so callers can say so precisely.

use std::fmt;
use std::str::FromStr;

/// A `sha256:<64 lowercase hex>` digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a usable digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string has no `algorithm:encoded` shape.
    #[error("digest {0:?} is not of the form algorithm:hex")]
    Malformed(String),
    /// A syntactically valid algorithm that this node does not store by.
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    UnsupportedAlgorithm(String),
    /// The hex part has the wrong length or characters.
    #[error("sha256 digest must be 64 lowercase hex characters, got {0:?}")]
    BadEncoding(String),
}

impl Digest {
    /// Wraps raw sha256 output.
    pub fn from_sha256_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The lowercase hex encoding, as used in file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses a bare 64-character lowercase hex string (a store file name).
    pub fn from_hex(hex_str: &str) -> Result<Self, DigestError> {
        let valid = hex_str.len() == 64
            && hex_str
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::BadEncoding(hex_str.to_owned()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out)
            .map_err(|_| DigestError::BadEncoding(hex_str.to_owned()))?;
        Ok(Digest(out))
    }
}

/// Grammar from the OCI image spec: `algorithm-component` is `[a-z0-9]+`, separated by `[+._-]`.
fn is_valid_algorithm(alg: &str) -> bool {
    !alg.is_empty()
        && alg.split(['+', '.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, encoded) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        if !is_valid_algorithm(alg) || encoded.is_empty() {
            return Err(DigestError::Malformed(s.to_owned()));
        }
        if alg != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(alg.to_owned()));
        }
        Digest::from_hex(encoded)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(d.hex(), HEX);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            "sha256".parse::<Digest>(),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            ":abc".parse::<Digest>(),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            "SHA256:abc".parse::<Digest>(),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            format!("sha512:{HEX}").parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::BadEncoding(_))
        ));
        let upper = HEX.to_uppercase();
        assert!(matches!(
            format!("sha256:{upper}").parse::<Digest>(),
            Err(DigestError::BadEncoding(_))
        ));
        assert!(format!("sha256:{}/../x", &HEX[..60])
            .parse::<Digest>()
            .is_err());
        // multi-byte UTF-8 must not cause a slicing panic
        assert!("sha256:é".repeat(20).parse::<Digest>().is_err());
    }
}
