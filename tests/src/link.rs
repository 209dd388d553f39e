//! A loopback TCP proxy between a client and a server that a test can cut and heal: the
//! unreliable link of an edge node, without touching the server.

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Forwards `127.0.0.1:<port>` to `target` until cut; while cut, every connection is closed at
/// once and new ones are refused the same way.
#[derive(Debug)]
pub struct Link {
    port: u16,
    state: Arc<Mutex<State>>,
    accept: AbortHandle,
}

#[derive(Debug, Default)]
struct State {
    cut: bool,
    connections: Vec<AbortHandle>,
}

impl Link {
    /// A link to `target` (`host:port`).
    pub async fn to(target: &str) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port for the link");
        let port = listener.local_addr().expect("the link's address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let (target, shared) = (target.to_owned(), state.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if shared.lock().unwrap().cut {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut state = shared.lock().unwrap();
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(forward.abort_handle());
            }
        });
        Link { port, state, accept: accept.abort_handle() }
    }

    /// `nats://127.0.0.1:<port>`: where the client connects instead of the server.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the link and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.state.lock().unwrap().cut = false;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
