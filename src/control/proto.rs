//! The control protocol between `gfs_control` and the daemon: one JSON object per line over a
//! unix stream socket, one request and one reply per connection.
//!
//! Request: `{"version":1,"request":{"status":{}}}`.
//! Reply: `{"version":1,"ok":<payload>}` or `{"version":1,"error":"<message>"}`.
//!
//! The payload is the bare view (a `StatusView`, a list of `FsView`s, ...) rather than a tagged
//! union, so that `gfs_control --json` can print it as it is; the client knows which request it
//! sent and therefore which type to expect.

use gfs_core::view::{FsView, StatusView};
use gfs_core::NodeId;
use serde::{Deserialize, Serialize};

/// The control protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Every control protocol version this build accepts in a request.
pub const SUPPORTED_VERSIONS: &[u32] = &[PROTOCOL_VERSION];
/// Longest request line accepted by the daemon, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Where the daemon listens unless told otherwise (systemd's `RuntimeDirectory=gfs_controld`).
pub const DEFAULT_SOCKET_PATH: &str = "/run/gfs_controld/gfs_controld.sock";

/// What an operator can ask the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Daemon-wide state: membership, quorum, fencing waits, recent recoveries.
    Status {},
    /// Filesystems, or only the one named `fs` (matched by filesystem name or lock table).
    Ls {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fs: Option<String>,
    },
    /// The daemon's in-memory debug log ring.
    Dump {},
    /// An operator confirms that `nodeid` is down (stands in for fencing, SPEC S1).
    FenceAck { nodeid: NodeId },
    /// Daemon and protocol versions.
    Version {},
}

impl Request {
    /// The request's name on the wire, for log messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status {} => "status",
            Request::Ls { .. } => "ls",
            Request::Dump {} => "dump",
            Request::FenceAck { .. } => "fence_ack",
            Request::Version {} => "version",
        }
    }
}

/// Versions reported by `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub daemon_version: String,
    /// Control protocol versions the daemon accepts.
    pub control_protocols: Vec<u32>,
    /// Range of cluster (CPG) protocol versions the daemon can run.
    pub cluster_protocol_min: u16,
    pub cluster_protocol_max: u16,
}

impl VersionInfo {
    /// The versions of this build.
    pub fn current() -> VersionInfo {
        VersionInfo {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            control_protocols: SUPPORTED_VERSIONS.to_vec(),
            cluster_protocol_min: gfs_core::wire::PROTOCOL_MIN,
            cluster_protocol_max: gfs_core::wire::PROTOCOL_MAX,
        }
    }
}

/// The daemon's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(StatusView),
    Filesystems(Vec<FsView>),
    Dump(Vec<String>),
    /// A short human-readable result (`fence_ack`).
    Message(String),
    Version(VersionInfo),
    /// The daemon refused or could not carry out the request.
    Error(String),
}

/// Why a line could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("request is longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unsupported control protocol version {found} (supported: {supported:?})")]
    UnsupportedVersion { found: u64, supported: Vec<u32> },
    #[error("reply does not match the request: {0}")]
    UnexpectedReply(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestEnvelope {
    version: u32,
    request: Request,
}

/// Reads only the version, so that a request from a newer client is refused as such rather
/// than as malformed.
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct ReplyEnvelope {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One request line, newline included.
pub fn encode_request(request: &Request) -> String {
    let envelope = RequestEnvelope {
        version: PROTOCOL_VERSION,
        request: request.clone(),
    };
    // Serialising plain data with string keys cannot fail.
    let mut line = serde_json::to_string(&envelope).unwrap_or_default();
    line.push('\n');
    line
}

/// Parses one request line (without or with its trailing newline).
pub fn decode_request(line: &[u8]) -> Result<Request, ProtoError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(ProtoError::TooLong);
    }
    let probe: VersionProbe =
        serde_json::from_slice(line).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    let version = probe
        .version
        .ok_or_else(|| ProtoError::Malformed("missing field `version`".to_owned()))?;
    let version = version
        .as_u64()
        .ok_or_else(|| ProtoError::Malformed("`version` is not a number".to_owned()))?;
    if !SUPPORTED_VERSIONS.iter().any(|&v| u64::from(v) == version) {
        return Err(ProtoError::UnsupportedVersion {
            found: version,
            supported: SUPPORTED_VERSIONS.to_vec(),
        });
    }
    let envelope: RequestEnvelope =
        serde_json::from_slice(line).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    Ok(envelope.request)
}

/// The reply payload alone, as `gfs_control --json` prints it (`null` for an error).
pub fn reply_payload(reply: &Reply) -> serde_json::Value {
    let value = match reply {
        Reply::Status(status) => serde_json::to_value(status),
        Reply::Filesystems(filesystems) => serde_json::to_value(filesystems),
        Reply::Dump(lines) => serde_json::to_value(lines),
        Reply::Message(message) => serde_json::to_value(message),
        Reply::Version(version) => serde_json::to_value(version),
        Reply::Error(_) => Ok(serde_json::Value::Null),
    };
    value.unwrap_or(serde_json::Value::Null)
}

/// One reply line, newline included.
pub fn encode_reply(reply: &Reply) -> String {
    let envelope = match reply {
        Reply::Error(message) => ReplyEnvelope {
            version: PROTOCOL_VERSION,
            ok: None,
            error: Some(message.clone()),
        },
        other => ReplyEnvelope {
            version: PROTOCOL_VERSION,
            ok: Some(reply_payload(other)),
            error: None,
        },
    };
    let mut line = serde_json::to_string(&envelope).unwrap_or_default();
    line.push('\n');
    line
}

/// Parses the reply to `request`: the payload type follows from the request.
pub fn decode_reply(line: &[u8], request: &Request) -> Result<Reply, ProtoError> {
    let envelope: ReplyEnvelope =
        serde_json::from_slice(line).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&envelope.version) {
        return Err(ProtoError::UnsupportedVersion {
            found: u64::from(envelope.version),
            supported: SUPPORTED_VERSIONS.to_vec(),
        });
    }
    match (envelope.ok, envelope.error) {
        (_, Some(message)) => Ok(Reply::Error(message)),
        (Some(payload), None) => {
            let typed = |e: serde_json::Error| ProtoError::UnexpectedReply(e.to_string());
            Ok(match request {
                Request::Status {} => {
                    Reply::Status(serde_json::from_value(payload).map_err(typed)?)
                }
                Request::Ls { .. } => {
                    Reply::Filesystems(serde_json::from_value(payload).map_err(typed)?)
                }
                Request::Dump {} => Reply::Dump(serde_json::from_value(payload).map_err(typed)?),
                Request::FenceAck { .. } => {
                    Reply::Message(serde_json::from_value(payload).map_err(typed)?)
                }
                Request::Version {} => {
                    Reply::Version(serde_json::from_value(payload).map_err(typed)?)
                }
            })
        }
        (None, None) => Err(ProtoError::Malformed(
            "reply has neither `ok` nor `error`".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form_is_the_documented_one() {
        assert_eq!(
            encode_request(&Request::Status {}),
            "{\"version\":1,\"request\":{\"status\":{}}}\n"
        );
        assert_eq!(
            encode_request(&Request::FenceAck { nodeid: 3 }),
            "{\"version\":1,\"request\":{\"fence_ack\":{\"nodeid\":3}}}\n"
        );
        assert_eq!(
            encode_request(&Request::Ls { fs: None }),
            "{\"version\":1,\"request\":{\"ls\":{}}}\n"
        );
    }

    #[test]
    fn every_request_round_trips() {
        for request in [
            Request::Status {},
            Request::Ls { fs: None },
            Request::Ls {
                fs: Some("fs1".to_owned()),
            },
            Request::Dump {},
            Request::FenceAck { nodeid: 7 },
            Request::Version {},
        ] {
            let line = encode_request(&request);
            assert_eq!(decode_request(line.as_bytes()).unwrap(), request);
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(matches!(
            decode_request(b"not json"),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(b"{\"request\":{\"status\":{}}}"),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(b"{\"version\":9,\"request\":{\"status\":{}}}"),
            Err(ProtoError::UnsupportedVersion { found: 9, .. })
        ));
        assert!(matches!(
            decode_request(b"{\"version\":1,\"request\":{\"reboot\":{}}}"),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(b"{\"version\":1,\"request\":{\"fence_ack\":{\"nodeid\":-1}}}"),
            Err(ProtoError::Malformed(_))
        ));
        let long = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(matches!(decode_request(&long), Err(ProtoError::TooLong)));
    }

    #[test]
    fn replies_round_trip_against_their_request() {
        let version = Reply::Version(VersionInfo::current());
        let line = encode_reply(&version);
        assert_eq!(
            decode_reply(line.as_bytes(), &Request::Version {}).unwrap(),
            version
        );
        let error = Reply::Error("no such node".to_owned());
        let line = encode_reply(&error);
        assert_eq!(line, "{\"version\":1,\"error\":\"no such node\"}\n");
        assert_eq!(
            decode_reply(line.as_bytes(), &Request::Status {}).unwrap(),
            error
        );
        let dump = Reply::Dump(vec!["a".to_owned(), "b".to_owned()]);
        let line = encode_reply(&dump);
        assert_eq!(
            decode_reply(line.as_bytes(), &Request::Dump {}).unwrap(),
            dump
        );
        assert!(matches!(
            decode_reply(line.as_bytes(), &Request::Status {}),
            Err(ProtoError::UnexpectedReply(_))
        ));
    }
}
