//! OCI repository names.
//!
//! The distribution spec grammar is
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
//! Validating against it is what keeps `..`, empty segments and absolute paths out of
//! everything downstream (upstream URLs, log lines, future on-disk refs).

/// Maximum total length; distribution rejects longer names too.
pub const MAX_NAME_LEN: usize = 255;

/// Why a repository name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository name {name:?}: {reason}")]
pub struct NameError {
    /// The offending name.
    pub name: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_component(c: &str) -> Result<(), &'static str> {
    let bytes = c.as_bytes();
    if bytes.is_empty() {
        return Err("empty path component");
    }
    if !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return Err("components must start and end with [a-z0-9]");
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: exactly ".", "_", "__", or one or more "-".
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return Err("invalid separator or character (allowed: [a-z0-9] joined by '.', '_', '__' or '-')");
        }
    }
    Ok(())
}

/// Checks `name` against the OCI distribution repository name grammar.
pub fn validate_repository_name(name: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        name: name.to_owned(),
        reason,
    };
    if name.len() > MAX_NAME_LEN {
        return Err(err("longer than 255 characters"));
    }
    for component in name.split('/') {
        valid_component(component).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for n in [
            "library/ubuntu",
            "a",
            "my-org/my__model.v2/weights",
            "a--b",
            "x.y_z",
        ] {
            validate_repository_name(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn rejects_hostile_names() {
        for n in [
            "",
            "..",
            "../etc",
            "a/../b",
            "/abs",
            "a/",
            "a//b",
            "A",
            "a___b",
            "a.-b",
            "a b",
            "-a",
            "a-",
            "a/.hidden",
            "é",
        ] {
            assert!(
                validate_repository_name(n).is_err(),
                "{n:?} should be rejected"
            );
        }
        assert!(validate_repository_name(&"a".repeat(256)).is_err());
    }
}
