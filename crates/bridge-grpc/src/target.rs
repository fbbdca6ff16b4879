//! Where out-of-process logic listens: a TCP address or a Unix domain socket.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where `BusinessLogic` is served.
///
/// Written `http://host:port` (or just `host:port`) for TCP, `unix:/path/to.sock` (or
/// `unix:///path/to.sock`) for a Unix domain socket, the usual choice for a sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// TCP: the URI `http://host:port`.
    Tcp(String),
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

/// Why a target string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The target is empty.
    #[error("the client logic target is empty")]
    Empty,
    /// `unix:` with no path after it.
    #[error("the client logic target {0:?} has no socket path")]
    NoSocketPath(String),
    /// A scheme other than `http` and `unix` (TLS is not supported: serve the logic on a
    /// Unix socket or a trusted network).
    #[error(
        "the client logic target {0:?} has an unsupported scheme (use http://host:port or unix:/path)"
    )]
    UnsupportedScheme(String),
    /// Not a URI, or no host, or no port.
    #[error("the client logic target {target:?} is not http://host:port: {reason}")]
    Invalid {
        /// The target as written.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(target: &str) -> Result<Self, TargetError> {
        let target = target.trim();
        if target.is_empty() {
            return Err(TargetError::Empty);
        }
        if let Some(rest) = target.strip_prefix("unix:") {
            // `unix:///p` and `unix:/p` are the same path, as in gRPC's naming document.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(TargetError::NoSocketPath(target.to_owned()));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let uri = match target.split_once("://") {
            Some(("http", _)) => target.to_owned(),
            Some(_) => return Err(TargetError::UnsupportedScheme(target.to_owned())),
            None => format!("http://{target}"),
        };
        let invalid = |reason: &str| TargetError::Invalid {
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed: tonic::codegen::http::Uri = uri
            .parse()
            .map_err(|e: tonic::codegen::http::uri::InvalidUri| invalid(&e.to_string()))?;
        if parsed.host().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        // Port 80 by default would surprise: logic servers listen on ports of their own.
        if parsed.port_u16().is_none() {
            return Err(invalid("no port"));
        }
        if parsed.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(invalid("a path is not allowed"));
        }
        Ok(Target::Tcp(format!(
            "http://{}",
            parsed.authority().map_or("", |a| a.as_str())
        )))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(uri) => f.write_str(uri),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let tcp = |s: &str| Target::Tcp(s.to_owned());
        assert_eq!(
            "http://127.0.0.1:50051".parse(),
            Ok(tcp("http://127.0.0.1:50051"))
        );
        assert_eq!("localhost:7".parse(), Ok(tcp("http://localhost:7")));
        assert_eq!("http://[::1]:9/".parse(), Ok(tcp("http://[::1]:9")));
        let unix = |s: &str| Target::Unix(PathBuf::from(s));
        assert_eq!("unix:/run/logic.sock".parse(), Ok(unix("/run/logic.sock")));
        assert_eq!(
            "unix:///run/logic.sock".parse(),
            Ok(unix("/run/logic.sock"))
        );
        assert_eq!("unix:logic.sock".parse(), Ok(unix("logic.sock")));
        assert_eq!(
            "unix:/run/logic.sock"
                .parse::<Target>()
                .map(|t| t.to_string()),
            Ok("unix:/run/logic.sock".to_owned())
        );
    }

    #[test]
    fn bad_targets_are_refused() {
        assert_eq!("  ".parse::<Target>(), Err(TargetError::Empty));
        assert!(matches!(
            "unix:".parse::<Target>(),
            Err(TargetError::NoSocketPath(_))
        ));
        assert!(matches!(
            "https://logic:443".parse::<Target>(),
            Err(TargetError::UnsupportedScheme(_))
        ));
        for bad in [
            "http://logic",
            "logic",
            "http://:80",
            "http://h:1/path",
            "h:port",
        ] {
            assert!(
                matches!(bad.parse::<Target>(), Err(TargetError::Invalid { .. })),
                "{bad} was accepted"
            );
        }
    }
}
