//! `Range: bytes=...` for blob GETs (RFC 9110 §14). One range is served as 206; a
//! multi-range request is answered with the whole blob (allowed by the RFC).

/// Outcome of interpreting a Range header against a blob size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) Range: send everything with 200.
    Full,
    /// Inclusive byte range to send with 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Interprets `header` (the Range value, if any) for a blob of `size` bytes.
pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.map(str::trim).and_then(|h| h.strip_prefix("bytes=")) else {
        // Absent, or a unit we do not know: ignore it.
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse_num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            // Saturate absurdly long numbers instead of rejecting them.
            Some(s.parse().unwrap_or(u64::MAX))
        }
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-n: the last n bytes
        (true, false) => match parse_num(last) {
            Some(0) | None => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        // bytes=a-
        (false, true) => match parse_num(first) {
            Some(a) if a < size => RangeRequest::Partial {
                start: a,
                end: size - 1,
            },
            _ => RangeRequest::Unsatisfiable,
        },
        // bytes=a-b
        (false, false) => match (parse_num(first), parse_num(last)) {
            (Some(a), Some(b)) if a <= b && a < size => RangeRequest::Partial {
                start: a,
                end: b.min(size - 1),
            },
            _ => RangeRequest::Unsatisfiable,
        },
        (true, true) => RangeRequest::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn forms() {
        assert_eq!(parse(None, 10), Full);
        assert_eq!(parse(Some("bytes=0-3"), 10), Partial { start: 0, end: 3 });
        assert_eq!(parse(Some("bytes=5-"), 10), Partial { start: 5, end: 9 });
        assert_eq!(parse(Some("bytes=-3"), 10), Partial { start: 7, end: 9 });
        assert_eq!(parse(Some("bytes=-30"), 10), Partial { start: 0, end: 9 });
        assert_eq!(parse(Some("bytes=8-100"), 10), Partial { start: 8, end: 9 });
        assert_eq!(parse(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=5-2"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=x-1"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse(Some("items=0-1"), 10), Full);
        assert_eq!(
            parse(Some("bytes=99999999999999999999999-"), 10),
            Unsatisfiable
        );
    }
}
