//! The CLI's side: one blocking request, with advice when the agent cannot be reached.

use std::{
    io::{self, BufRead, Write},
    os::unix::{fs::MetadataExt, net::UnixStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use nix::errno::Errno;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::{
    names,
    protocol::{PROTOCOL_VERSION, Reply, Request, encode_request},
};

/// Connects to the agent at `path`, sends `request` (and the policy it carries, after its
/// line) and returns its reply, the result read as `T` (an error reply is still `Ok`: look
/// at `ok`). Waits [`Request::reply_timeout`]: long enough for a large policy's map
/// writes, short enough that a stuck agent is noticed.
pub fn request<T: DeserializeOwned>(path: &Path, request: &Request) -> anyhow::Result<Reply<T>> {
    let mut stream = UnixStream::connect(path).map_err(|e| connect_error(path, e))?;
    let reply_timeout = request.reply_timeout();
    stream.set_read_timeout(Some(reply_timeout))?;
    stream.set_write_timeout(Some(reply_timeout))?;
    let mut request = request.clone();
    let upload = request
        .upload_mut()
        .map(|upload| std::mem::take(&mut upload.text));
    let sent = stream
        .write_all(&encode_request(&request))
        .and_then(|()| upload.map_or(Ok(()), |text| stream.write_all(text.as_bytes())));
    // An agent that refuses a request may hang up before reading all of it; its reply,
    // if any, says more than our write error.
    let bytes = match (read_reply(&mut stream, path, reply_timeout), sent) {
        (Ok(bytes), _) => bytes,
        (Err(_), Err(e)) => {
            return Err(e).with_context(|| {
                format!("cannot send the request to the agent at {}", path.display())
            });
        }
        (Err(e), Ok(())) => return Err(e),
    };
    let malformed = || format!("malformed reply from the agent at {}", path.display());
    // The envelope first: another version's result is explained, not misread.
    let envelope: Reply<IgnoredAny> = serde_json::from_slice(&bytes).with_context(malformed)?;
    if envelope.version != PROTOCOL_VERSION {
        bail!(
            "the agent at {} speaks protocol version {} and this filter-agent speaks {}; \
             run the same version of both{}",
            path.display(),
            envelope.version,
            PROTOCOL_VERSION,
            envelope
                .error
                .map(|e| format!(" (the agent said: {e})"))
                .unwrap_or_default()
        );
    }
    serde_json::from_slice(&bytes).with_context(malformed)
}

/// The reply's bytes, up to its newline.
fn read_reply(
    stream: &mut UnixStream,
    path: &Path,
    reply_timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    // Up to the newline, not the end of the stream: an agent that hung up on a request it
    // did not read in full leaves us a reply followed by ECONNRESET.
    if let Err(e) = io::BufReader::new(stream).read_until(b'\n', &mut bytes) {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            bail!(
                "the agent at {} did not reply within {}",
                path.display(),
                humantime::format_duration(reply_timeout)
            );
        }
        return Err(e)
            .with_context(|| format!("cannot read the reply of the agent at {}", path.display()));
    }
    if bytes.is_empty() {
        bail!(
            "the agent at {} closed the connection without replying",
            path.display()
        );
    }
    Ok(bytes)
}

/// No agent answers on the control socket (none ever ran, or it stopped): the one failure
/// after which the pinned filter may still be read directly.
#[derive(Debug)]
pub struct NoAgent(String);

impl std::fmt::Display for NoAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoAgent {}

/// Says why the agent cannot be reached and what to do about it.
fn connect_error(path: &Path, error: io::Error) -> anyhow::Error {
    let shown = path.display();
    match error.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => NoAgent(format!(
            "no agent is running (no control socket at {shown}); start `filter-agent run`"
        ))
        .into(),
        // The socket file of an agent that stopped.
        Some(Errno::ECONNREFUSED) => NoAgent(format!(
            "no agent is running (nothing answers on {shown}); start `filter-agent run`"
        ))
        .into(),
        Some(Errno::EACCES) => {
            let advice = "run as root or as a member of the socket's group";
            match std::fs::metadata(path) {
                Ok(metadata) => anyhow!(
                    "permission denied: {shown} is mode {:04o} {}:{}; {advice}",
                    metadata.mode() & 0o7777,
                    names::user_name(metadata.uid()).unwrap_or_else(|| metadata.uid().to_string()),
                    names::group_name(metadata.gid()).unwrap_or_else(|| metadata.gid().to_string()),
                ),
                Err(e) => anyhow!("permission denied: cannot reach {shown} ({e}); {advice}"),
            }
        }
        _ => anyhow!(error).context(format!("cannot connect to the agent at {shown}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    use crate::control::testing::temp_dir;
    use std::{io::Read, os::unix::net::UnixListener, thread};

    fn error_of(path: &Path) -> String {
        request::<serde_json::Value>(path, &Request::Status)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn no_agent_is_explained() {
        let dir = temp_dir();
        let path = dir.path().join("control.sock");
        assert_eq!(
            error_of(&path),
            format!(
                "no agent is running (no control socket at {}); start `filter-agent run`",
                path.display()
            )
        );
        drop(UnixListener::bind(&path).unwrap());
        assert_eq!(
            error_of(&path),
            format!(
                "no agent is running (nothing answers on {}); start `filter-agent run`",
                path.display()
            )
        );
    }

    /// Serves one connection with `reply` (raw bytes) after reading the request line.
    fn fake_agent(reply: &'static [u8]) -> (TempDir, std::path::PathBuf, thread::JoinHandle<()>) {
        let dir = temp_dir();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let agent = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut byte = [0];
            while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {}
            stream.write_all(reply).unwrap();
        });
        (dir, path, agent)
    }

    #[test]
    fn bad_replies_are_explained() {
        let cases: [(&[u8], &str); 3] = [
            (b"", "closed the connection without replying"),
            (b"<html>", "malformed reply from the agent at"),
            (
                b"{\"version\":2,\"ok\":false,\"error\":\"unsupported protocol version 1\"}\n",
                "speaks protocol version 2 and this filter-agent speaks 1; run the same \
                 version of both (the agent said: unsupported protocol version 1)",
            ),
        ];
        for (reply, expected) in cases {
            let (_dir, path, agent) = fake_agent(reply);
            let error = error_of(&path);
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
            agent.join().unwrap();
        }
        let (_dir, path, agent) = fake_agent(b"{\"version\":1,\"ok\":true,\"result\":[1]}\n");
        let reply = request::<serde_json::Value>(&path, &Request::ExemptionsList).unwrap();
        assert_eq!(reply.result, Some(serde_json::json!([1])));
        agent.join().unwrap();
    }
}
