//! Client errors, each with the exit code the CLI ends with.

use shoal_proto::control::ErrorCode;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any failure not listed below.
    pub const FAILURE: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// shoald is not running or not reachable.
    pub const DAEMON_UNREACHABLE: i32 = 3;
    /// The reference, tag or blob does not exist.
    pub const NOT_FOUND: i32 = 4;
    /// The origin registry is unreachable and no peer had the content.
    pub const REGISTRY_UNREACHABLE: i32 = 5;
    /// Permission denied (socket, files, token).
    pub const PERMISSION_DENIED: i32 = 6;
    /// Out of disk space or store quota.
    pub const DISK_FULL: i32 = 7;
    /// A `--timeout` elapsed.
    pub const TIMEOUT: i32 = 8;
    /// Content refused: digest mismatch, or a path escaping the target directory.
    pub const REFUSED: i32 = 9;
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached.
    #[error("cannot reach shoald at {at}: {reason}. Is shoald running? Start it, or point --daemon / SHOAL_DAEMON at its control socket")]
    DaemonUnreachable {
        /// Socket path or URL.
        at: String,
        /// Transport error.
        reason: String,
    },
    /// The OS refused (socket or file permissions).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// Error kind.
        code: ErrorCode,
        /// The daemon's message.
        message: String,
    },
    /// Bad user input (reference, platform, path).
    #[error("{0}")]
    Usage(String),
    /// Content refused: a digest mismatch, a path escaping the target, a bad layout.
    #[error("{0}")]
    Refused(String),
    /// A timeout elapsed.
    #[error("{0}")]
    Timeout(String),
    /// Local file I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// Wraps an I/O error with what was being done; permission and space errors keep
    /// their own kinds so the exit code says what to fix.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ClientError {
        let context = context.into();
        match source.kind() {
            std::io::ErrorKind::PermissionDenied => {
                ClientError::PermissionDenied(format!("{context}: {source}"))
            }
            std::io::ErrorKind::StorageFull => ClientError::Api {
                code: ErrorCode::DiskFull,
                message: format!("{context}: disk full; free space and run again (it resumes)"),
            },
            _ => ClientError::Io { context, source },
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::DaemonUnreachable { .. } => exit::DAEMON_UNREACHABLE,
            ClientError::PermissionDenied(_) => exit::PERMISSION_DENIED,
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Refused(_) => exit::REFUSED,
            ClientError::Timeout(_) => exit::TIMEOUT,
            ClientError::Io { .. } | ClientError::Other(_) => exit::FAILURE,
            ClientError::Api { code, .. } => match code {
                ErrorCode::NotFound => exit::NOT_FOUND,
                ErrorCode::UpstreamUnreachable => exit::REGISTRY_UNREACHABLE,
                ErrorCode::Unauthorized => exit::PERMISSION_DENIED,
                ErrorCode::DiskFull => exit::DISK_FULL,
                ErrorCode::DigestMismatch => exit::REFUSED,
                ErrorCode::Timeout => exit::TIMEOUT,
                ErrorCode::BadRequest => exit::USAGE,
                ErrorCode::Internal => exit::FAILURE,
            },
        }
    }
}

/// Result alias.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
