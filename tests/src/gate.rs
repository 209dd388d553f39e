//! A gate in front of the Docker engine's socket: every request goes through, except those a
//! test holds (`POST /containers/create`, say), which wait until the gate opens. A runtime call
//! held there is a step a test can kill a node inside of, and know it did.
//!
//! Each request's head is read (and its body, by its `Content-Length`), so a connection kept
//! alive for many requests is gated request by request; answers flow back untouched. A request
//! whose client goes away while held is dropped: Docker never sees it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What is held now: the method and a piece of the path of the requests to hold.
#[derive(Debug, Clone, Default, PartialEq)]
struct Hold {
    rule: Option<(String, String)>,
}

#[derive(Debug)]
pub struct DockerGate {
    path: PathBuf,
    hold: watch::Sender<Hold>,
    /// While set, answers trickle back this many bytes at a time, each after this pause.
    pace: watch::Sender<Option<(usize, std::time::Duration)>>,
    held: Arc<Mutex<Vec<String>>>,
    accept: AbortHandle,
}

impl DockerGate {
    /// A gate in `dir`, in front of the Docker engine at `docker` (a socket's path), open.
    pub async fn to(docker: &Path, dir: &Path) -> DockerGate {
        let path = dir.join("docker-gate.sock");
        let listener = UnixListener::bind(&path).expect("the gate's socket");
        let (hold, watching) = watch::channel(Hold::default());
        let (pace, pacing) = watch::channel(None);
        let held = Arc::new(Mutex::new(Vec::new()));
        let (docker, shared) = (docker.to_owned(), held.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = UnixStream::connect(&docker).await else { continue };
                tokio::spawn(forward(client, server, watching.clone(), pacing.clone(), shared.clone()));
            }
        });
        DockerGate { path, hold, pace, held, accept: accept.abort_handle() }
    }

    /// `unix://…`: where a client finds the Docker engine through the gate.
    pub fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Holds every request of `method` whose path contains `piece`, from now until [`open`].
    ///
    /// [`open`]: DockerGate::open
    pub fn hold(&self, method: &str, piece: &str) {
        self.hold.send_replace(Hold { rule: Some((method.to_owned(), piece.to_owned())) });
    }

    /// From now on, Docker's answers come back `bytes` at a time, each after `pause`: a pull's
    /// progress reaches the node as a slow link would bring it.
    pub fn slow_answers(&self, bytes: usize, pause: std::time::Duration) {
        self.pace.send_replace(Some((bytes.max(1), pause)));
    }

    /// Lets every request through, those held first.
    pub fn open(&self) {
        self.hold.send_replace(Hold::default());
    }

    /// The request lines held now.
    pub fn held(&self) -> Vec<String> {
        self.held.lock().unwrap().clone()
    }
}

impl Drop for DockerGate {
    fn drop(&mut self) {
        self.open();
        self.accept.abort();
    }
}

/// Passes one connection's requests to the server, each once its hold lets it, and the
/// server's answers back.
async fn forward(
    client: UnixStream,
    server: UnixStream,
    mut hold: watch::Receiver<Hold>,
    pace: watch::Receiver<Option<(usize, std::time::Duration)>>,
    held: Arc<Mutex<Vec<String>>>,
) {
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let paced = *pace.borrow();
            let room = paced.map_or(buffer.len(), |(bytes, _)| bytes.min(buffer.len()));
            let Ok(read) = server_read.read(&mut buffer[..room]).await else { break };
            if read == 0 || client_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
            if let Some((_, pause)) = paced {
                tokio::time::sleep(pause).await;
            }
        }
        let _ = client_write.shutdown().await;
    });
    let mut client = BufReader::new(client_read);
    loop {
        let Some((line, request)) = read_request(&mut client).await else { break };
        let holds = |hold: &Hold| {
            hold.rule.as_ref().is_some_and(|(method, piece)| {
                line.split(' ').next() == Some(method.as_str())
                    && line.split(' ').nth(1).is_some_and(|p| p.contains(piece.as_str()))
            })
        };
        if holds(&hold.borrow_and_update()) {
            held.lock().unwrap().push(line.clone());
            // Held until the gate opens, or the client goes away (then Docker never sees it).
            let gone = loop {
                // What the client sent already beyond this request stays buffered for the
                // next one; then only the gate is waited for.
                let buffered = !client.buffer().is_empty();
                tokio::select! {
                    changed = hold.changed() => {
                        if changed.is_err() || !holds(&hold.borrow_and_update()) {
                            break false;
                        }
                    }
                    read = client.fill_buf(), if !buffered => {
                        if read.map_or(true, |b| b.is_empty()) {
                            break true;
                        }
                    }
                }
            };
            held.lock().unwrap().retain(|l| l != &line);
            if gone {
                break;
            }
        }
        if server_write.write_all(&request).await.is_err() {
            break;
        }
    }
    let _ = server_write.shutdown().await;
    let _ = answers.await;
}

/// One request: its request line, and its bytes (head and body). `None` at the connection's
/// end, or on a request it cannot read (a body it cannot size).
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(client: &mut R) -> Option<(String, Vec<u8>)> {
    let mut request = Vec::new();
    let mut line = String::new();
    let mut length = 0usize;
    let mut first = None;
    loop {
        line.clear();
        if client.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        request.extend_from_slice(line.as_bytes());
        let trimmed = line.trim_end();
        if first.is_none() {
            first = Some(trimmed.to_owned());
            continue;
        }
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not sent by the node's calls.
            return None;
        }
    }
    let mut body = vec![0u8; length];
    client.read_exact(&mut body).await.ok()?;
    request.extend_from_slice(&body);
    Some((first?, request))
}
