//! What crosses the control socket. One request per connection over a Unix stream
//! socket: the client writes one JSON object and a newline, the server writes one JSON
//! reply and closes.
//!
//! ```text
//! -> {"version":1,"command":"exemptions-add","prefix":"192.0.2.7/32","reason":"ticket 42","expires":"2h","until":null}
//! <- {"version":1,"ok":true,"result":{...}}
//! <- {"version":1,"ok":false,"error":"permission denied: ...","kind":"permission-denied"}
//! ```

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const PROTOCOL_VERSION: u32 = 1;
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// One request per connection: the client writes one JSON object and a newline, the server
/// one reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Stats,
    ExemptionsList,
    ExemptionsAdd {
        prefix: String,
        reason: String,
        expires: Option<String>,
        until: Option<String>,
    },
    ExemptionsRemove {
        prefix: String,
    },
    Explain {
        src: IpAddr,
        dst: IpAddr,
        dport: u16,
    },
    /// The sources with the most blocked attempts; `top` of them (default
    /// [`DEFAULT_TOP_OFFENDERS`]).
    Offenders {
        #[serde(default)]
        top: Option<usize>,
    },
}

/// How many offenders `filter-agent offenders` lists unless told otherwise.
pub const DEFAULT_TOP_OFFENDERS: usize = 20;

/// The wire names of the commands, to tell an unknown command from a bad known one.
/// A test holds it to the enum.
const COMMANDS: [&str; 7] = [
    "status",
    "stats",
    "exemptions-list",
    "exemptions-add",
    "exemptions-remove",
    "explain",
    "offenders",
];

impl Request {
    /// Whether the request changes what the filter does (and so needs a writer).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Request::ExemptionsAdd { .. } | Request::ExemptionsRemove { .. }
        )
    }
}

/// The request as sent: the command's fields next to `version`.
#[derive(Serialize)]
struct Envelope<'a> {
    version: u32,
    #[serde(flatten)]
    request: &'a Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    PermissionDenied,
    BadRequest,
    Failed,
}

/// `{"version":1,"ok":true,"result":...}` or
/// `{"version":1,"ok":false,"error":"...","kind":"bad-request"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

impl Reply {
    pub(super) fn success(result: Value) -> Reply {
        Reply {
            version: PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
            kind: None,
        }
    }

    pub(super) fn failure(error: &ControlError) -> Reply {
        Reply {
            version: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(error.to_string()),
            kind: Some(error.kind()),
        }
    }
}

/// Why a request was not carried out. The message is shown to the user as is, so it says
/// what was wrong; `PermissionDenied` is displayed with a "permission denied: " prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    PermissionDenied(String),
    BadRequest(String),
    Failed(String),
}

impl ControlError {
    fn kind(&self) -> ErrorKind {
        match self {
            ControlError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            ControlError::BadRequest(_) => ErrorKind::BadRequest,
            ControlError::Failed(_) => ErrorKind::Failed,
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::PermissionDenied(message) => write!(f, "permission denied: {message}"),
            ControlError::BadRequest(message) | ControlError::Failed(message) => {
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ControlError {}

/// Parses one request, checking in the order that gives the most useful error: JSON, then
/// the version (a newer client's fields mean nothing here), then the command, then its
/// fields.
pub(super) fn parse_request(bytes: &[u8]) -> Result<Request, ControlError> {
    let bad = |message: String| ControlError::BadRequest(message);
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed request: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(bad(format!(
            "malformed request: expected a JSON object, got {}",
            json_type(&value)
        )));
    };
    match object.remove("version") {
        None => {
            return Err(bad(format!(
                "missing \"version\" (this agent speaks {PROTOCOL_VERSION})"
            )));
        }
        Some(version) if version.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(version) => {
            return Err(bad(format!(
                "unsupported protocol version {version} (this agent speaks {PROTOCOL_VERSION})"
            )));
        }
    }
    let command = match object.get("command") {
        None => return Err(bad("missing \"command\"".to_string())),
        Some(Value::String(command)) if COMMANDS.contains(&command.as_str()) => command.clone(),
        Some(command @ Value::String(_)) => {
            return Err(bad(format!(
                "unknown command {command} (known: {})",
                COMMANDS.join(", ")
            )));
        }
        Some(other) => {
            return Err(bad(format!(
                "\"command\" must be a string, got {}",
                json_type(other)
            )));
        }
    };
    let request: Request = serde_json::from_value(Value::Object(object.clone()))
        .map_err(|e| bad(format!("invalid {command} request: {e}")))?;
    // Unknown fields are refused rather than ignored: a misspelt `expires` must not add an
    // exemption that never expires. (serde's deny_unknown_fields misses unit variants.)
    let known = serde_json::to_value(&request).expect("a request always serializes");
    if let Some(unknown) = object.keys().find(|key| known.get(key.as_str()).is_none()) {
        return Err(bad(format!(
            "invalid {command} request: unknown field `{unknown}`"
        )));
    }
    Ok(request)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The request as written on the wire, newline included.
pub(super) fn encode_request(request: &Request) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(&Envelope {
        version: PROTOCOL_VERSION,
        request,
    })
    .expect("a request always serializes");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One of each variant (the exhaustive match makes a new variant fail to compile here
    /// until it is added).
    fn every_request() -> Vec<Request> {
        let all = vec![
            Request::Status,
            Request::Stats,
            Request::ExemptionsList,
            Request::ExemptionsAdd {
                prefix: "192.0.2.7/32".into(),
                reason: "ticket 42".into(),
                expires: Some("2h".into()),
                until: None,
            },
            Request::ExemptionsAdd {
                prefix: "2001:db8::/64".into(),
                reason: "lab".into(),
                expires: None,
                until: Some("2030-01-01T00:00:00Z".into()),
            },
            Request::ExemptionsRemove {
                prefix: "192.0.2.7/32".into(),
            },
            Request::Explain {
                src: "100.64.1.2".parse().unwrap(),
                dst: "2001:db8::25".parse().unwrap(),
                dport: 25,
            },
            Request::Offenders { top: Some(5) },
            Request::Offenders { top: None },
        ];
        for request in &all {
            match request {
                Request::Status
                | Request::Stats
                | Request::ExemptionsList
                | Request::ExemptionsAdd { .. }
                | Request::ExemptionsRemove { .. }
                | Request::Explain { .. }
                | Request::Offenders { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_request_round_trips_through_the_wire_format() {
        for request in every_request() {
            let bytes = encode_request(&request);
            assert_eq!(bytes.last(), Some(&b'\n'));
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(value["version"], json!(PROTOCOL_VERSION));
            let command = value["command"].as_str().unwrap();
            assert!(
                COMMANDS.contains(&command),
                "{command} missing from COMMANDS"
            );
            assert_eq!(parse_request(&bytes), Ok(request));
        }
        let mut names: Vec<String> = every_request()
            .iter()
            .map(|r| {
                serde_json::to_value(r).unwrap()["command"]
                    .as_str()
                    .unwrap()
                    .into()
            })
            .collect();
        names.dedup();
        assert_eq!(names, COMMANDS);
    }

    #[test]
    fn wire_format_is_flat_and_kebab_case() {
        let request = Request::ExemptionsRemove {
            prefix: "192.0.2.0/24".into(),
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&encode_request(&request)).unwrap(),
            json!({"version": 1, "command": "exemptions-remove", "prefix": "192.0.2.0/24"})
        );
        // Optional fields may be left out.
        assert_eq!(
            parse_request(br#"{"version":1,"command":"exemptions-add","prefix":"p","reason":"r"}"#),
            Ok(Request::ExemptionsAdd {
                prefix: "p".into(),
                reason: "r".into(),
                expires: None,
                until: None
            })
        );
    }

    #[test]
    fn offenders_top_may_be_left_out() {
        assert_eq!(
            parse_request(br#"{"version":1,"command":"offenders"}"#),
            Ok(Request::Offenders { top: None })
        );
        assert_eq!(
            parse_request(br#"{"version":1,"command":"offenders","top":3}"#),
            Ok(Request::Offenders { top: Some(3) })
        );
        assert!(
            parse_error(r#"{"version":1,"command":"offenders","top":-1}"#)
                .starts_with("invalid offenders request: invalid value: integer `-1`")
        );
        assert!(
            parse_error(r#"{"version":1,"command":"offenders","limit":3}"#)
                .starts_with("invalid offenders request: unknown field `limit`")
        );
    }

    #[test]
    fn only_add_and_remove_are_mutations() {
        let mutations: Vec<bool> = every_request().iter().map(Request::is_mutation).collect();
        assert_eq!(
            mutations,
            [false, false, false, true, true, true, false, false, false],
            "{:?}",
            every_request()
        );
    }

    fn parse_error(input: &str) -> String {
        match parse_request(input.as_bytes()) {
            Err(ControlError::BadRequest(message)) => message,
            other => panic!("{input}: expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(
            parse_error("garbage"),
            "malformed request: expected value at line 1 column 1"
        );
        assert!(parse_error(r#"{"version":1,"comm"#).starts_with("malformed request: EOF"));
        assert_eq!(
            parse_error("[1]"),
            "malformed request: expected a JSON object, got an array"
        );
        assert_eq!(
            parse_error(r#"{"command":"status"}"#),
            "missing \"version\" (this agent speaks 1)"
        );
        assert_eq!(
            parse_error(r#"{"version":7,"command":"status"}"#),
            "unsupported protocol version 7 (this agent speaks 1)"
        );
        assert_eq!(
            parse_error(r#"{"version":"1","command":"status"}"#),
            "unsupported protocol version \"1\" (this agent speaks 1)"
        );
        assert_eq!(parse_error(r#"{"version":1}"#), "missing \"command\"");
        assert!(
            parse_error(r#"{"version":1,"command":"frobnicate"}"#)
                .starts_with("unknown command \"frobnicate\" (known: status, stats,")
        );
        assert_eq!(
            parse_error(r#"{"version":1,"command":5}"#),
            "\"command\" must be a string, got a number"
        );
        assert_eq!(
            parse_error(r#"{"version":1,"command":"exemptions-remove"}"#),
            "invalid exemptions-remove request: missing field `prefix`"
        );
        assert!(
            parse_error(r#"{"version":1,"command":"explain","src":"x","dst":"::1","dport":25}"#)
                .starts_with("invalid explain request: invalid IP address syntax")
        );
        assert!(
            parse_error(
                r#"{"version":1,"command":"exemptions-add","prefix":"p","reason":"r","expire":"1h"}"#
            )
            .starts_with("invalid exemptions-add request: unknown field `expire`")
        );
        assert!(
            parse_error(r#"{"version":1,"command":"status","verbose":true}"#)
                .starts_with("invalid status request: unknown field `verbose`")
        );
    }

    #[test]
    fn replies_serialize_without_empty_fields() {
        assert_eq!(
            serde_json::to_value(Reply::success(json!({"a": 1}))).unwrap(),
            json!({"version": 1, "ok": true, "result": {"a": 1}})
        );
        let denied = ControlError::PermissionDenied("needs root".into());
        let reply = Reply::failure(&denied);
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            json!({"version": 1, "ok": false, "error": "permission denied: needs root",
                   "kind": "permission-denied"})
        );
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
        assert_eq!(ControlError::BadRequest("x".into()).to_string(), "x");
        assert_eq!(
            Reply::failure(&ControlError::Failed("y".into())).kind,
            Some(ErrorKind::Failed)
        );
    }
}
