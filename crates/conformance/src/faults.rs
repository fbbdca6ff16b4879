//! A TCP proxy that loses requests and acknowledgements on demand, for testing what a networked
//! store (and the core above it) does when the network fails at the worst moment.
//!
//! Put it between a store's client and its real server (`FaultyProxy::start(server)`, then
//! connect the client to [`FaultyProxy::addr`]). It forwards bytes both ways until told to cut:
//! [`cut_after_next_request`](FaultyProxy::cut_after_next_request) forwards the next chunk a
//! client sends and closes that connection before a byte of the reply comes back, the lost
//! acknowledgement; [`cut_before_next_request`](FaultyProxy::cut_before_next_request) closes
//! the connection instead of forwarding the chunk. Request/response protocols write a request
//! in one chunk, so "the next chunk" is "the next request".

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const FORWARD: u8 = 0;
const CUT_AFTER: u8 = 1;
const CUT_BEFORE: u8 = 2;

/// A fault-injecting TCP proxy on `127.0.0.1`. Dropping it stops it and closes every
/// connection.
pub struct FaultyProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// What to do with the next chunk from a client.
    next: AtomicU8,
    /// Bumped to close every connection.
    generation: watch::Sender<u64>,
    /// Requests lost so far: forwarded without their reply, or not forwarded.
    cuts: AtomicU64,
}

impl FaultyProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            next: AtomicU8::new(FORWARD),
            generation: watch::channel(0).0,
            cuts: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = Arc::clone(&accepting);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, &shared).await;
                    }
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next chunk any client sends reaches the server, and its connection is closed before
    /// the reply comes back.
    pub fn cut_after_next_request(&self) {
        self.shared.next.store(CUT_AFTER, Ordering::SeqCst);
    }

    /// The next chunk any client sends is dropped with its connection, never forwarded.
    pub fn cut_before_next_request(&self) {
        self.shared.next.store(CUT_BEFORE, Ordering::SeqCst);
    }

    /// Forward everything again (cancels a cut that has not happened yet).
    pub fn heal(&self) {
        self.shared.next.store(FORWARD, Ordering::SeqCst);
    }

    /// Closes every open connection now.
    pub fn cut_all(&self) {
        self.shared
            .generation
            .send_modify(|generation| *generation += 1);
    }

    /// How many requests were lost so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

/// Copies bytes both ways until either side closes, a cut, or [`FaultyProxy::cut_all`].
async fn relay(mut client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut generation = shared.generation.subscribe();
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let mut from_client = vec![0; 64 * 1024];
    let mut from_server = vec![0; 64 * 1024];
    // Set once a request went through that must not get its reply.
    let mut swallow_reply = false;
    loop {
        tokio::select! {
            read = client_read.read(&mut from_client) => {
                let Ok(len) = read else { return };
                if len == 0 {
                    return;
                }
                match shared.next.swap(FORWARD, Ordering::SeqCst) {
                    CUT_BEFORE => {
                        shared.cuts.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    CUT_AFTER => {
                        shared.cuts.fetch_add(1, Ordering::SeqCst);
                        swallow_reply = true;
                    }
                    _ => {}
                }
                if server_write.write_all(&from_client[..len]).await.is_err() {
                    return;
                }
            }
            read = server_read.read(&mut from_server) => {
                let Ok(len) = read else { return };
                // The first byte of the reply to a cut request: the server has it, the
                // client never will.
                if len == 0 || swallow_reply {
                    return;
                }
                if client_write.write_all(&from_server[..len]).await.is_err() {
                    return;
                }
            }
            _ = generation.changed() => return,
        }
    }
}

/// A loopback listener that accepts connections and never answers a byte (until the task is
/// aborted): what a store must not wait on forever, at open or at a request.
pub async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: every chunk comes back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0; 1024];
                    while let Ok(len) = socket.read(&mut buffer).await {
                        if len == 0 || socket.write_all(&buffer[..len]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut reply = vec![0; message.len()];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    }

    #[tokio::test]
    async fn forwards_then_loses_the_reply_or_the_request_when_told() {
        let proxy = FaultyProxy::start(echo().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"ping").await.unwrap(), b"ping");
        proxy.cut_after_next_request();
        assert!(round_trip(&mut stream, b"lost reply").await.is_err());
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"again").await.unwrap(), b"again");
        proxy.cut_before_next_request();
        assert!(round_trip(&mut stream, b"lost request").await.is_err());
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"open").await.unwrap(), b"open");
        proxy.cut_all();
        assert!(round_trip(&mut stream, b"closed").await.is_err());
        assert_eq!(proxy.cuts(), 2);
    }
}
