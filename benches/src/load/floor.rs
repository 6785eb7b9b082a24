//! The floor: a bare tokio TCP server that writes one frame to every subscriber, run as its own
//! process (`lectern-bench floor-serve`) exactly as the node is, with the same clients on the
//! same two cores. What the node's fan-out costs beyond this is the gateway's overhead.
//!
//! Protocol, all on one listening port. A connection's first byte says what it is: `W` or `S`
//! (a subscriber standing in for a websocket or an SSE client; the server answers one byte
//! once it is subscribed) or `C` (the control connection of the sender). On the control
//! connection each message is `ws_len: u32 LE, sse_len: u32 LE`, then that many bytes of the
//! websocket-sized frame and of the SSE-sized frame; the server hands the pair to every
//! subscriber through a broadcast channel, and each subscriber's task writes its group's frame
//! to its socket. That is the node's design (one task per connection fed by a broadcast
//! channel) without Socket.IO, HTTP, JSON or the hub.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

/// Options of the hidden `floor-serve` subcommand.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// How frames reach the sockets.
    #[arg(long, value_enum, default_value_t = Mode::Loop)]
    pub mode: Mode,
}

/// How the floor server writes a frame to its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One task per socket, fed by a broadcast channel: the node's design, without the rest.
    Tasks,
    /// One task writes the frame to every socket in turn: no wake-ups, no per-socket task.
    Loop,
}

impl Mode {
    /// The mode's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tasks => "tasks",
            Mode::Loop => "loop",
        }
    }
}

/// Frames queued per subscriber before it lags (the node's room capacity).
const CHANNEL_CAPACITY: usize = 4096;

/// Largest frame the control connection accepts.
const FRAME_MAX_BYTES: u32 = 1 << 20;

/// One probe's frames: the websocket-sized and the SSE-sized one.
struct Frames {
    ws: Vec<u8>,
    sse: Vec<u8>,
}

/// Runs the floor server until its stdin closes: prints `floor: ADDR` once listening.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    super::node::count_heap_if_asked();
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async {
        let listener = TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("bind {}", args.addr))?;
        let addr = listener.local_addr().context("read the bound address")?;
        println!("floor: {addr}");
        super::node::serve_stdin();
        let (tx, _) = broadcast::channel::<Arc<Frames>>(CHANNEL_CAPACITY);
        let writer = match args.mode {
            Mode::Tasks => None,
            Mode::Loop => {
                let (add, added) = mpsc::unbounded_channel();
                tokio::spawn(write_loop(tx.subscribe(), added));
                Some(add)
            }
        };
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                // Out of file descriptors and the like: the clients will see the failure.
                Err(_) => continue,
            };
            tokio::spawn(connection(stream, tx.clone(), writer.clone()));
        }
    })
}

/// Sends probes to the floor server.
pub struct Control {
    stream: TcpStream,
}

impl Control {
    /// Opens the control connection.
    pub async fn connect(floor: SocketAddr) -> anyhow::Result<Control> {
        let mut stream = TcpStream::connect(floor)
            .await
            .context("connect to the floor")?;
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        stream
            .write_all(b"C")
            .await
            .context("open the floor's control connection")?;
        Ok(Control { stream })
    }

    /// Has the floor write `ws` to every `W` subscriber and `sse` to every `S` subscriber.
    pub async fn send(&mut self, ws: &[u8], sse: &[u8]) -> anyhow::Result<()> {
        let mut msg = Vec::with_capacity(8 + ws.len() + sse.len());
        msg.extend_from_slice(&u32::try_from(ws.len())?.to_le_bytes());
        msg.extend_from_slice(&u32::try_from(sse.len())?.to_le_bytes());
        msg.extend_from_slice(ws);
        msg.extend_from_slice(sse);
        self.stream
            .write_all(&msg)
            .await
            .context("send a probe to the floor")
    }
}

/// A frame of exactly `len` bytes (at least the marker's) carrying `marker`.
pub fn frame(marker: &str, len: usize) -> Vec<u8> {
    let mut f = marker.as_bytes().to_vec();
    f.resize(len.max(f.len() + 1) - 1, b'x');
    f.push(b'\n');
    f
}

/// A socket of the one writer task, and whether it wants the websocket-sized frame.
type Subscriber = (TcpStream, bool);

async fn connection(
    mut stream: TcpStream,
    tx: broadcast::Sender<Arc<Frames>>,
    writer: Option<mpsc::UnboundedSender<Subscriber>>,
) {
    let mut kind = [0u8; 1];
    if stream.read_exact(&mut kind).await.is_err() {
        return;
    }
    match kind[0] {
        b'C' => control(stream, tx).await,
        group @ (b'W' | b'S') => {
            let _ = stream.set_nodelay(true);
            match writer {
                // The writer gets the socket right after its go-ahead, without an await in
                // between; the sender starts only after every client is in and a quiet second.
                Some(writer) => {
                    if stream.write_all(b"K").await.is_ok() {
                        let _ = writer.send((stream, group == b'W'));
                    }
                }
                None => {
                    let rx = tx.subscribe();
                    if stream.write_all(b"K").await.is_ok() {
                        subscriber(stream, rx, group == b'W').await;
                    }
                }
            }
        }
        _ => {}
    }
}

/// Writes every frame to every socket in turn, alternating between the two groups so that
/// neither waits behind the other. A write to a socket with room in its send buffer completes
/// without yielding, so this is one `write` call per socket per frame.
async fn write_loop(
    mut frames: broadcast::Receiver<Arc<Frames>>,
    mut added: mpsc::UnboundedReceiver<Subscriber>,
) {
    // [websocket-sized, SSE-sized] subscribers.
    let mut groups: [Vec<TcpStream>; 2] = [Vec::new(), Vec::new()];
    let add = |groups: &mut [Vec<TcpStream>; 2], (stream, ws): Subscriber| {
        groups[usize::from(!ws)].push(stream);
    };
    loop {
        tokio::select! {
            s = added.recv() => match s {
                Some(s) => add(&mut groups, s),
                None => return,
            },
            f = frames.recv() => match f {
                Ok(frames) => {
                    while let Ok(s) = added.try_recv() {
                        add(&mut groups, s);
                    }
                    let longest = groups[0].len().max(groups[1].len());
                    for i in 0..longest {
                        for (g, frame) in [(0, &frames.ws), (1, &frames.sse)] {
                            if let Some(stream) = groups[g].get_mut(i) {
                                // A failed socket stays in place (so the order holds) and
                                // fails again, cheaply.
                                let _ = stream.write_all(frame).await;
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn control(mut stream: TcpStream, tx: broadcast::Sender<Arc<Frames>>) {
    loop {
        let mut head = [0u8; 8];
        if stream.read_exact(&mut head).await.is_err() {
            return;
        }
        let ws_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let sse_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if ws_len > FRAME_MAX_BYTES || sse_len > FRAME_MAX_BYTES {
            return;
        }
        let mut ws = vec![0u8; ws_len as usize];
        let mut sse = vec![0u8; sse_len as usize];
        if stream.read_exact(&mut ws).await.is_err() || stream.read_exact(&mut sse).await.is_err() {
            return;
        }
        let _ = tx.send(Arc::new(Frames { ws, sse }));
    }
}

async fn subscriber(mut stream: TcpStream, mut rx: broadcast::Receiver<Arc<Frames>>, ws: bool) {
    loop {
        match rx.recv().await {
            Ok(frames) => {
                let f = if ws { &frames.ws } else { &frames.sse };
                if stream.write_all(f).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_length() {
        assert_eq!(frame("lb:1:2;", 50).len(), 50);
        assert_eq!(frame("lb:1:2;", 3), b"lb:1:2;\n");
    }
}
