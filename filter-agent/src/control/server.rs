//! The agent's side: binding the socket, and answering one request per connection.

use std::{
    fs,
    io::{self, ErrorKind as IoErrorKind},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    },
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use log::{debug, info, warn};
use nix::errno::Errno;
use serde::Serialize;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
    time::timeout,
};

use super::{
    names, peer,
    protocol::{
        ControlError, MAX_POLICY_BYTES, MAX_REQUEST_BYTES, PolicyUpload, Reply, Request,
        parse_request,
    },
};

/// A client that has connected has this long to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies are small, but a client that never reads must not hold a task forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog. Bounds the memory and file
/// descriptors a local user can tie up.
const MAX_CONNECTIONS: usize = 32;
/// A policy upload (up to [`MAX_POLICY_BYTES`]) has this long to arrive.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Who is asking: the credentials the kernel recorded when the peer connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The user name, or "uid N" if the uid has none.
    pub user: String,
}

impl Peer {
    /// Reads the peer's credentials from the socket. The user name is left empty: looking
    /// it up may go to NSS (LDAP, sssd), so it is filled in off the runtime's thread.
    fn identify(stream: &UnixStream) -> io::Result<Peer> {
        let credentials = stream.peer_cred()?;
        let pid = credentials.pid().unwrap_or(0);
        let groups = match peer::peer_groups(stream.as_raw_fd()) {
            Ok(groups) => groups,
            Err(e) if e.raw_os_error() == Some(Errno::ENOPROTOOPT as i32) => {
                fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|status| peer::groups_from_status(&status))
                    // Without it only the primary group counts: fails closed.
                    .unwrap_or_default()
            }
            Err(e) => return Err(e),
        };
        Ok(Peer {
            pid,
            uid: credentials.uid(),
            gid: credentials.gid(),
            groups,
            user: String::new(),
        })
    }

    fn is_member(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

fn user_label(uid: u32) -> String {
    names::user_name(uid).unwrap_or_else(|| format!("uid {uid}"))
}

fn group_label(gid: u32) -> String {
    names::group_name(gid).unwrap_or_else(|| format!("gid {gid}"))
}

/// The agent implements this; called for every well-formed request that passed the
/// permission check, on a blocking thread (it may take locks and write maps).
pub trait Handler: Send + Sync + 'static {
    /// What requests are answered with: the agent's [`Response`](super::protocol::Response).
    type Reply: Serialize + Send + 'static;

    fn handle(&self, peer: &Peer, request: Request) -> Result<Self::Reply, ControlError>;
}

/// Who may change things: uid 0 always; members (primary or supplementary) of
/// `writers_gid` if set. Anyone who can connect (the socket's mode 0660 and group decide
/// that) may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub writers_gid: Option<u32>,
}

/// The permission check, kept apart from the socket so it can be tested with any peer.
fn allowed(peer: &Peer, request: &Request, permissions: &Permissions) -> Result<(), ControlError> {
    if !request.is_mutation()
        || peer.uid == 0
        || permissions
            .writers_gid
            .is_some_and(|gid| peer.is_member(gid))
    {
        return Ok(());
    }
    let who = format!("you are uid {}, user {}", peer.uid, peer.user);
    let what = request.change_name().unwrap_or("this request");
    Err(ControlError::PermissionDenied(
        match permissions.writers_gid {
            Some(gid) => format!(
                "{what} needs root or membership in group {} ({who})",
                group_label(gid)
            ),
            None => format!("{what} needs root ({who})"),
        },
    ))
}

/// Creates the socket directory (0755) if missing, refuses to take over a socket another
/// agent answers on, and binds with mode 0660, group `group` (looked up by name). Returns
/// the listener and the group's id. Call it inside the agent's tokio runtime.
///
/// The socket is bound under a temporary name and renamed into place once its mode and
/// group are right: no one can connect while it still has the umask's mode, and a stale
/// socket left by an agent that died is replaced in one step.
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<(UnixListener, Option<u32>)> {
    let gid = group.map(group_id).transpose()?;
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("control socket path {} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create the control socket directory {}",
                dir.display()
            )
        })?;
    refuse_live_socket(path)?;

    let temporary = dir.join(format!(
        ".{}.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    // Left behind only if an agent with our pid died in the middle of this.
    let _ = fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)
        .with_context(|| format!("cannot bind the control socket {}", temporary.display()))?;
    let placed = (|| {
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o660))
            .with_context(|| format!("cannot set mode 0660 on {}", temporary.display()))?;
        if let (Some(gid), Some(name)) = (gid, group) {
            std::os::unix::fs::chown(&temporary, None, Some(gid)).with_context(|| {
                format!(
                    "cannot give the control socket to group {name}: the agent needs \
                     CAP_CHOWN or membership in {name} (e.g. SupplementaryGroups={name} in \
                     its systemd unit)"
                )
            })?;
        }
        fs::rename(&temporary, path).with_context(|| {
            format!(
                "cannot move the control socket into place at {}",
                path.display()
            )
        })
    })();
    if let Err(e) = placed {
        let _ = fs::remove_file(&temporary);
        return Err(e);
    }
    Ok((listener, gid))
}

/// A group's id by name, for the socket's group and for `Permissions::writers_gid`.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    match names::group_id(name) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => bail!(
            "unknown group {name:?}: no such group (create it with `groupadd --system {name}` \
             or name an existing one)"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot look up group {name:?}")),
    }
}

/// Errors if `path` is something other than a socket, or a socket an agent answers on.
fn refuse_live_socket(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == IoErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        Ok(metadata) if !metadata.file_type().is_socket() => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!("another agent is serving on {}", path.display()),
        Err(e) if e.raw_os_error() == Some(Errno::ECONNREFUSED as i32) => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot tell whether an agent is serving on {}",
                path.display()
            )
        }),
    }
}

/// Accepts forever, each connection in its own task. Nothing a client sends and nothing a
/// handler does (an error, a panic) ends the loop.
pub async fn serve<H: Handler>(listener: UnixListener, permissions: Permissions, handler: Arc<H>) {
    serve_with(listener, permissions, handler, READ_TIMEOUT).await
}

async fn serve_with<H: Handler>(
    listener: UnixListener,
    permissions: Permissions,
    handler: Arc<H>,
    read_timeout: Duration,
) {
    let permissions = Arc::new(permissions);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match listener.accept().await {
            Ok((stream, _)) => {
                let permissions = Arc::clone(&permissions);
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    connection(stream, permissions, handler, read_timeout).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection<H: Handler>(
    mut stream: UnixStream,
    permissions: Arc<Permissions>,
    handler: Arc<H>,
    read_timeout: Duration,
) {
    let reply = answer(&mut stream, permissions, handler, read_timeout).await;
    let mut bytes = serde_json::to_vec(&reply).expect("a reply always serializes");
    bytes.push(b'\n');
    let written = timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("control socket: cannot send the reply: {e}"),
        Err(_) => debug!("control socket: client did not take the reply in time"),
    }
}

async fn answer<H: Handler>(
    stream: &mut UnixStream,
    permissions: Arc<Permissions>,
    handler: Arc<H>,
    read_timeout: Duration,
) -> Reply<H::Reply> {
    let mut peer = match Peer::identify(stream) {
        Ok(peer) => peer,
        Err(e) => {
            return Reply::failure(&ControlError::Failed(format!(
                "cannot identify the caller: {e}"
            )));
        }
    };
    let mut reader = BufReader::new(stream);
    let request = match timeout(read_timeout, read_request(&mut reader)).await {
        Err(_) => Err(ControlError::BadRequest(format!(
            "no complete request within {}; send one JSON object and a newline",
            humantime::format_duration(read_timeout)
        ))),
        Ok(read) => read.and_then(|bytes| parse_request(&bytes)),
    };
    let request = match request {
        // Only a request that may be carried out gets its upload read.
        Ok(mut request) if request.has_upload() => {
            peer.user = user_label(peer.uid);
            match allowed(&peer, &request, &permissions) {
                Ok(()) => {
                    let upload = request.upload_mut().expect("checked above");
                    read_upload(&mut reader, upload).await.map(|()| request)
                }
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            debug!("control socket: pid {} uid {}: {e}", peer.pid, peer.uid);
            return Reply::failure(&e);
        }
    };
    // Name lookups and the handler may block; the runtime thread also runs the agent.
    let outcome = tokio::task::spawn_blocking(move || {
        peer.user = user_label(peer.uid);
        let what = format!("{request:?}");
        let mutation = request.is_mutation();
        let result =
            allowed(&peer, &request, &permissions).and_then(|()| handler.handle(&peer, request));
        let who = format!("pid {} uid {} ({})", peer.pid, peer.uid, peer.user);
        match &result {
            Err(e @ ControlError::PermissionDenied(_)) => warn!("control: {who}: {what}: {e}"),
            Err(e) => info!("control: {who}: {what}: {e}"),
            Ok(_) if mutation => info!("control: {who}: {what}: done"),
            Ok(_) => debug!("control: {who}: {what}: done"),
        }
        result
    })
    .await;
    match outcome {
        Ok(Ok(result)) => Reply::success(result),
        Ok(Err(e)) => Reply::failure(&e),
        Err(e) => {
            // The panic message is already on stderr through the panic hook.
            warn!("control: the handler failed: {e}");
            Reply::failure(&ControlError::Failed(
                "internal error in the agent while handling the request (see its log)".into(),
            ))
        }
    }
}

/// Reads the policy text that follows a request line, at most [`MAX_POLICY_BYTES`],
/// within [`UPLOAD_TIMEOUT`].
async fn read_upload(
    reader: &mut (impl AsyncRead + Unpin),
    upload: &mut PolicyUpload,
) -> Result<(), ControlError> {
    if upload.bytes > MAX_POLICY_BYTES {
        return Err(ControlError::BadRequest(format!(
            "a policy of {} bytes is larger than the {MAX_POLICY_BYTES} bytes allowed",
            upload.bytes
        )));
    }
    let mut bytes = vec![0; upload.bytes];
    match timeout(UPLOAD_TIMEOUT, reader.read_exact(&mut bytes)).await {
        Err(_) => {
            return Err(ControlError::BadRequest(format!(
                "the {} bytes of the policy did not arrive within {}",
                upload.bytes,
                humantime::format_duration(UPLOAD_TIMEOUT)
            )));
        }
        Ok(Err(e)) => {
            return Err(ControlError::BadRequest(format!(
                "the request announced {} bytes of policy: {e}",
                upload.bytes
            )));
        }
        Ok(Ok(_)) => {}
    }
    upload.text = String::from_utf8(bytes).map_err(|e| {
        ControlError::BadRequest(format!("the policy {} is not UTF-8: {e}", upload.name))
    })?;
    Ok(())
}

/// Reads one request: up to a newline or the end of the stream, and never more than
/// `MAX_REQUEST_BYTES` (plus the newline), so an oversized request is refused after
/// reading just past the limit, not after buffering all of it. What follows the newline
/// stays in `reader` (a policy upload).
async fn read_request(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<Vec<u8>, ControlError> {
    let mut bytes = Vec::new();
    (&mut *reader)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_until(b'\n', &mut bytes)
        .await
        .map_err(|e| ControlError::Failed(format!("cannot read the request: {e}")))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    } else if bytes.len() > MAX_REQUEST_BYTES {
        return Err(ControlError::BadRequest(format!(
            "request larger than {MAX_REQUEST_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    use crate::control::testing::temp_dir;
    use crate::control::{
        protocol::{ErrorKind, PROTOCOL_VERSION, encode_request},
        request,
    };
    use serde_json::{Value, json};
    use std::{os::unix::fs::MetadataExt, path::PathBuf, sync::Mutex};

    /// Records every call; `explain` to port 0 panics, removing "missing" fails.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(u32, Request)>>,
    }

    impl Handler for Recorder {
        type Reply = Value;

        fn handle(&self, peer: &Peer, request: Request) -> Result<Value, ControlError> {
            self.calls.lock().unwrap().push((peer.uid, request.clone()));
            match &request {
                Request::Explain { dport: 0, .. } => panic!("test handler panics on port 0"),
                Request::ExemptionsRemove { prefix } if prefix == "missing" => {
                    Err(ControlError::Failed("no exemption for missing".into()))
                }
                _ => Ok(json!({"request": request, "user": peer.user})),
            }
        }
    }

    impl Recorder {
        fn calls(&self) -> Vec<(u32, Request)> {
            self.calls.lock().unwrap().clone()
        }
    }

    struct Server {
        path: PathBuf,
        recorder: Arc<Recorder>,
        task: tokio::task::JoinHandle<()>,
        _dir: TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn start_with(permissions: Permissions, read_timeout: Duration) -> Server {
        let dir = temp_dir();
        let path = dir.path().join("run/control.sock");
        let (listener, gid) = bind(&path, None).unwrap();
        assert_eq!(gid, None);
        let recorder = Arc::new(Recorder::default());
        let task = tokio::spawn(serve_with(
            listener,
            permissions,
            recorder.clone(),
            read_timeout,
        ));
        Server {
            path,
            recorder,
            task,
            _dir: dir,
        }
    }

    fn start() -> Server {
        start_with(Permissions { writers_gid: None }, READ_TIMEOUT)
    }

    /// Sends raw bytes (then ends the write side if asked) and returns the reply.
    async fn exchange(path: &Path, bytes: &[u8], end_write: bool) -> Reply {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        if end_write {
            stream.shutdown().await.unwrap();
        }
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply.last(), Some(&b'\n'));
        serde_json::from_slice(&reply).unwrap()
    }

    async fn send(path: &Path, req: Request) -> Reply {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || request::<Value>(&path, &req))
            .await
            .unwrap()
            .unwrap()
    }

    fn assert_error(reply: &Reply, kind: ErrorKind, error: &str) {
        assert_eq!(reply.version, PROTOCOL_VERSION);
        assert!(!reply.ok, "{reply:?}");
        assert_eq!(reply.kind, Some(kind), "{reply:?}");
        assert_eq!(reply.result, None);
        let message = reply.error.as_deref().unwrap();
        assert!(
            message.starts_with(error),
            "{message:?} should start with {error:?}"
        );
    }

    fn our_uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn apply(text: &str) -> Request {
        Request::Apply {
            policy: PolicyUpload::new("new.yaml".into(), text.into()),
            confirm_within: None,
        }
    }

    #[tokio::test]
    async fn a_policy_upload_follows_the_line_and_reaches_the_handler_whole() {
        let server = start();
        // Larger than a request line may be.
        let text = format!(
            "version: 1\n{}",
            "# padding\n".repeat(MAX_REQUEST_BYTES / 5)
        );
        let reply = send(&server.path, apply(&text)).await;
        assert!(reply.ok, "{reply:?}");
        assert_eq!(server.recorder.calls(), [(our_uid(), apply(&text))]);

        // Announced but not sent: refused once the client hangs up, handler not called.
        let mut line = encode_request(&apply("version: 1\n"));
        line.extend_from_slice(b"vers");
        let reply = exchange(&server.path, &line, true).await;
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "the request announced 11 bytes of policy",
        );
        let mut huge = apply("");
        huge.upload_mut().unwrap().bytes = MAX_POLICY_BYTES + 1;
        let reply = exchange(&server.path, &encode_request(&huge), true).await;
        assert_error(&reply, ErrorKind::BadRequest, "a policy of 67108865 bytes");
        assert_eq!(server.recorder.calls().len(), 1);
    }

    #[tokio::test]
    async fn good_request_gets_its_result() {
        let server = start();
        let reply = send(&server.path, Request::Stats).await;
        assert!(reply.ok, "{reply:?}");
        assert_eq!(reply.error, None);
        assert_eq!(
            reply.result.unwrap()["request"],
            json!({"command": "stats"})
        );
        assert_eq!(server.recorder.calls(), [(our_uid(), Request::Stats)]);
        let mode = fs::metadata(&server.path).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o660);
        let dir_mode = fs::metadata(server.path.parent().unwrap()).unwrap().mode();
        assert_eq!(dir_mode & 0o7777, 0o755);
    }

    #[tokio::test]
    async fn garbage_gets_bad_request_and_the_server_keeps_answering() {
        let server = start();
        let reply = exchange(&server.path, b"\x00\xffgarbage\n", false).await;
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "malformed request: expected value at line 1 column 1",
        );
        let reply = exchange(&server.path, b"", true).await;
        assert_error(&reply, ErrorKind::BadRequest, "malformed request: EOF");
        assert!(send(&server.path, Request::Status).await.ok);
        assert_eq!(server.recorder.calls(), [(our_uid(), Request::Status)]);
    }

    #[tokio::test]
    async fn truncated_json_gets_bad_request() {
        let server = start();
        let reply = exchange(&server.path, br#"{"version":1,"command":"exem"#, true).await;
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "malformed request: EOF while parsing a string at line 1 column 28",
        );
        assert!(server.recorder.calls().is_empty());
    }

    #[tokio::test]
    async fn oversized_request_is_refused_at_the_limit() {
        let server = start();
        let stream = UnixStream::connect(&server.path).await.unwrap();
        let (read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let mut big = br#"{"version":1,"command":"exemptions-add","reason":""#.to_vec();
            big.resize(1 << 20, b'a');
            write.write_all(&big).await
        });
        let mut reply = Vec::new();
        // To the newline only: the server hung up with our data unread, which resets the
        // connection after the reply.
        BufReader::new(read)
            .read_until(b'\n', &mut reply)
            .await
            .unwrap();
        let reply: Reply = serde_json::from_slice(&reply).unwrap();
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "request larger than 65536 bytes",
        );
        // The server stopped reading at the limit and hung up: a 1 MiB write cannot have
        // completed (a Unix socket buffers far less).
        assert!(writer.await.unwrap().is_err());
        assert!(server.recorder.calls().is_empty());
        assert!(send(&server.path, Request::Status).await.ok);

        // The client shows that reply, not its own failed write.
        let huge = Request::ExemptionsAdd {
            prefix: "192.0.2.7/32".into(),
            reason: "x".repeat(1 << 20),
            expires: None,
            until: None,
        };
        let reply = send(&server.path, huge).await;
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "request larger than 65536 bytes",
        );
    }

    #[tokio::test]
    async fn request_of_exactly_the_limit_is_accepted() {
        let server = start();
        let mut exact = br#"{"version":1,"command":"status"}"#.to_vec();
        exact.resize(MAX_REQUEST_BYTES, b' ');
        let mut line = exact.clone();
        line.push(b'\n');
        assert!(exchange(&server.path, &line, false).await.ok);
        assert!(exchange(&server.path, &exact, true).await.ok);
        exact.push(b' ');
        let reply = exchange(&server.path, &exact, true).await;
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "request larger than 65536 bytes",
        );
    }

    #[tokio::test]
    async fn wrong_version_and_unknown_command_are_named() {
        let server = start();
        let reply = exchange(
            &server.path,
            b"{\"version\":7,\"command\":\"status\"}\n",
            false,
        )
        .await;
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "unsupported protocol version 7 (this agent speaks 1)",
        );
        let reply = exchange(
            &server.path,
            b"{\"version\":1,\"command\":\"frobnicate\"}\n",
            false,
        )
        .await;
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "unknown command \"frobnicate\"",
        );
        assert!(server.recorder.calls().is_empty());
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_times_out() {
        let server = start_with(
            Permissions { writers_gid: None },
            Duration::from_millis(200),
        );
        let mut idle = UnixStream::connect(&server.path).await.unwrap();
        let mut reply = Vec::new();
        idle.read_to_end(&mut reply).await.unwrap();
        let reply: Reply = serde_json::from_slice(&reply).unwrap();
        assert_error(
            &reply,
            ErrorKind::BadRequest,
            "no complete request within 200ms",
        );
    }

    #[tokio::test]
    async fn handler_errors_and_panics_do_not_stop_the_server() {
        let server = start();
        let missing = Request::ExemptionsRemove {
            prefix: "missing".into(),
        };
        let reply = send(&server.path, missing).await;
        assert_error(&reply, ErrorKind::Failed, "no exemption for missing");
        let panics = Request::Explain {
            src: "100.64.0.1".parse().unwrap(),
            dst: "203.0.113.9".parse().unwrap(),
            dport: 0,
        };
        let reply = send(&server.path, panics).await;
        assert_error(&reply, ErrorKind::Failed, "internal error in the agent");
        assert!(send(&server.path, Request::Status).await.ok);
        assert_eq!(server.recorder.calls().len(), 3);
    }

    /// Runs `f` on a fresh thread that, if we are root, first takes uid and gid 65534 and
    /// the given supplementary groups. The raw syscalls change only that thread's
    /// credentials (glibc's wrappers would change every thread's), and SO_PEERCRED
    /// records the connecting thread's.
    fn as_other_user<T: Send + 'static>(
        groups: &[u32],
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let groups = groups.to_vec();
        std::thread::spawn(move || {
            if our_uid() == 0 {
                // SAFETY: plain syscalls on this thread's credentials.
                unsafe {
                    assert_eq!(
                        libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                        0
                    );
                    assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
                    assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
                }
            }
            f()
        })
        .join()
        .unwrap()
    }

    #[tokio::test]
    async fn a_mutation_from_a_non_writer_is_refused_and_not_handled() {
        let server = start_with(Permissions { writers_gid: None }, READ_TIMEOUT);
        let path = server.path.clone();
        let uid = if our_uid() == 0 {
            // The socket is 0660 root:root: another user cannot even connect, and is told
            // why.
            let blocked = path.clone();
            let error = tokio::task::spawn_blocking(move || {
                as_other_user(&[], move || request::<Value>(&blocked, &Request::Status))
            })
            .await
            .unwrap()
            .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "permission denied: {} is mode 0660 root:root; run as root or as a \
                     member of the socket's group",
                    path.display()
                )
            );
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
            65534
        } else {
            our_uid()
        };
        let add = Request::ExemptionsAdd {
            prefix: "192.0.2.7/32".into(),
            reason: "test".into(),
            expires: None,
            until: None,
        };
        let (denied, read) = tokio::task::spawn_blocking(move || {
            as_other_user(&[], move || {
                (
                    request::<Value>(&path, &add).unwrap(),
                    request::<Value>(&path, &Request::Status).unwrap(),
                )
            })
        })
        .await
        .unwrap();
        assert_error(
            &denied,
            ErrorKind::PermissionDenied,
            &format!(
                "permission denied: adding or removing exemptions needs root (you are uid {uid}, user "
            ),
        );
        assert!(read.ok, "anyone who can connect may read: {read:?}");
        assert_eq!(server.recorder.calls(), [(uid, Request::Status)]);
    }

    #[tokio::test]
    async fn a_member_of_the_writers_group_may_change_things() {
        assert_eq!(
            our_uid(),
            0,
            "this test needs root (it connects as another user); run the tests as root"
        );
        let server = start_with(
            Permissions {
                writers_gid: Some(4242),
            },
            READ_TIMEOUT,
        );
        fs::set_permissions(&server.path, fs::Permissions::from_mode(0o666)).unwrap();
        let path = server.path.clone();
        let remove = Request::ExemptionsRemove {
            prefix: "192.0.2.7/32".into(),
        };
        let sent = remove.clone();
        let reply = tokio::task::spawn_blocking(move || {
            as_other_user(&[100, 4242], move || {
                request::<Value>(&path, &sent).unwrap()
            })
        })
        .await
        .unwrap();
        assert!(reply.ok, "{reply:?}");
        assert_eq!(server.recorder.calls(), [(65534, remove)]);
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: 1234,
            uid,
            gid,
            groups: groups.to_vec(),
            user: "alice".into(),
        }
    }

    #[test]
    fn permission_check() {
        let add = Request::ExemptionsAdd {
            prefix: "192.0.2.7/32".into(),
            reason: "r".into(),
            expires: None,
            until: None,
        };
        let remove = Request::ExemptionsRemove {
            prefix: "192.0.2.7/32".into(),
        };
        let open = Permissions { writers_gid: None };
        let writers = Permissions {
            writers_gid: Some(4242),
        };
        let root = peer(0, 0, &[]);
        let alice = peer(1000, 1000, &[27, 100]);
        let primary = peer(1001, 4242, &[]);
        let supplementary = peer(1002, 1002, &[4242]);
        for permissions in [&open, &writers] {
            for request in [
                Request::Status,
                Request::Stats,
                Request::ExemptionsList,
                Request::Offenders { top: Some(5) },
            ] {
                assert_eq!(allowed(&alice, &request, permissions), Ok(()));
            }
            assert_eq!(allowed(&root, &add, permissions), Ok(()));
            assert_eq!(allowed(&root, &remove, permissions), Ok(()));
        }
        assert_eq!(allowed(&primary, &add, &writers), Ok(()));
        assert_eq!(allowed(&supplementary, &remove, &writers), Ok(()));
        assert!(allowed(&primary, &add, &open).is_err());
        assert_eq!(
            allowed(&alice, &add, &writers).unwrap_err().to_string(),
            "permission denied: adding or removing exemptions needs root or membership in \
             group gid 4242 (you are uid 1000, user alice)"
        );
        assert_eq!(
            allowed(
                &alice,
                &remove,
                &Permissions {
                    writers_gid: Some(0)
                }
            ),
            Err(ControlError::PermissionDenied(
                "adding or removing exemptions needs root or membership in group root \
                 (you are uid 1000, user alice)"
                    .into()
            ))
        );
        assert_eq!(
            allowed(&alice, &remove, &open).unwrap_err().to_string(),
            "permission denied: adding or removing exemptions needs root \
             (you are uid 1000, user alice)"
        );
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_but_not_a_live_one() {
        let dir = temp_dir();
        let path = dir.path().join("control.sock");
        let (listener, _) = bind(&path, None).unwrap();
        let error = bind(&path, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("another agent is serving on {}", path.display())
        );
        drop(listener);
        assert!(path.exists(), "a dropped listener leaves its socket file");
        let (_listener, _) = bind(&path, None).unwrap();
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the socket: {leftovers:?}");

        let file = dir.path().join("not-a-socket");
        fs::write(&file, "keep me").unwrap();
        let error = bind(&file, None).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("exists and is not a socket; refusing to replace it"),
            "{error}"
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn bind_gives_the_socket_to_the_group() {
        let dir = temp_dir();
        let path = dir.path().join("control.sock");
        let error = bind(&path, Some("no-such-group-filter-agent")).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("unknown group \"no-such-group-filter-agent\": no such group"),
            "{error}"
        );
        assert!(!path.exists());
        let gid = nix::unistd::getegid().as_raw();
        let name = names::group_name(gid).unwrap();
        let (_listener, bound_gid) = bind(&path, Some(&name)).unwrap();
        assert_eq!(bound_gid, Some(gid));
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!((metadata.gid(), metadata.mode() & 0o7777), (gid, 0o660));
    }

    #[tokio::test]
    async fn read_request_stops_at_the_newline() {
        let mut input: &[u8] = b"{\"version\":1}\nmore";
        assert_eq!(read_request(&mut input).await.unwrap(), b"{\"version\":1}");
        assert_eq!(input, b"more");
        let line = encode_request(&Request::Status);
        assert_eq!(
            parse_request(&read_request(&mut &line[..]).await.unwrap()),
            Ok(Request::Status)
        );
    }
}
