//! An SMTP server for tests, speaking real SMTP (RFC 5321) over TCP on `127.0.0.1:0`: greeting,
//! `EHLO`/`HELO`, `MAIL FROM`, `RCPT TO`, `DATA` (dot-unstuffed), `RSET`, `NOOP`, `QUIT`. It keeps
//! every accepted message and every `MAIL FROM` attempt (with its time), and can be told to
//! refuse mail with a transient (`451`) or permanent (`550`) reply, or to go away entirely (its
//! port then refuses connections), so that tests can watch retries and backoff.
//!
//! It can also be paused after `n` messages ([`SmtpServer::pause_after`]): each further message
//! is read to its end and then held, unanswered, until the test releases it with a `250`
//! ([`SmtpServer::release_held`], [`SmtpServer::resume`]) or takes it without ever answering
//! ([`SmtpServer::take_held_unanswered`]: the server has the message, the sender never learns
//! it), or hangs up on it ([`SmtpServer::drop_held`]: never accepted). A held message whose
//! sender hangs up first is dropped. So a test can stop or kill a sender at a known point of a
//! run, with messages known to be in flight, instead of racing it.
//!
//! Written from the RFC, not from any Lectern code, like the other clients of this kit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How the server answers `MAIL FROM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    /// `250`: mail is accepted.
    Accept,
    /// `451 4.3.0`: try again later.
    Transient,
    /// `550 5.7.1`: refused for good.
    Permanent,
}

/// A message the server accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The envelope sender.
    pub mail_from: String,
    /// The envelope recipients.
    pub rcpt_to: Vec<String>,
    /// The message as transmitted (headers and body, CRLF line ends, dot-unstuffed).
    pub data: String,
}

impl ReceivedMail {
    /// The (unfolded) value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = value.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }

    /// The body (after the blank line).
    pub fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

#[derive(Default)]
struct State {
    mails: Vec<ReceivedMail>,
    attempts: Vec<Instant>,
    /// Accept messages while fewer than this many were accepted; hold the rest.
    pause_after: Option<usize>,
    /// Messages read to their end and not answered yet, oldest first.
    held: Vec<Held>,
    next_held_id: u64,
}

/// A held message and how to tell its session what became of it.
struct Held {
    id: u64,
    mail: ReceivedMail,
    decided: oneshot::Sender<Decision>,
}

/// What becomes of a held message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Accepted: `250`.
    Answer,
    /// Accepted, but the reply never comes.
    Silence,
    /// Not accepted: the connection is closed without a reply.
    HangUp,
}

impl State {
    /// Ends the hold of every held message as `decision` (accepted ones join `mails`).
    fn decide_held(&mut self, decision: Decision) -> usize {
        let held = std::mem::take(&mut self.held);
        let n = held.len();
        for h in held {
            if decision != Decision::HangUp {
                self.mails.push(h.mail);
            }
            let _ = h.decided.send(decision);
        }
        n
    }
}

/// A running test SMTP server.
pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    mode: Arc<AtomicU8>,
    /// Milliseconds the server waits before answering `DATA`'s end (a slow server).
    delay_ms: Arc<AtomicU64>,
    changed: watch::Receiver<u64>,
    notify: Arc<watch::Sender<u64>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SmtpServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> anyhow::Result<SmtpServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the test SMTP server")?;
        SmtpServer::serve(listener)
    }

    /// Starts a server on `addr` (to come back on the port a stopped one had).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<SmtpServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind the test SMTP server on {addr}"))?;
        SmtpServer::serve(listener)
    }

    fn serve(listener: TcpListener) -> anyhow::Result<SmtpServer> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let mode = Arc::new(AtomicU8::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (tx, changed) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let notify = tx.clone();
        let task = {
            let (state, mode, delay_ms) = (state.clone(), mode.clone(), delay_ms.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (state, mode, delay_ms, tx) =
                        (state.clone(), mode.clone(), delay_ms.clone(), tx.clone());
                    tokio::spawn(async move {
                        let _ = session(stream, &state, &mode, &delay_ms, &tx).await;
                    });
                }
            })
        };
        Ok(SmtpServer {
            addr,
            state,
            mode,
            delay_ms,
            changed,
            notify,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How it answers `MAIL FROM` from now on.
    pub fn set_mode(&self, mode: SmtpMode) {
        let v = match mode {
            SmtpMode::Accept => 0,
            SmtpMode::Transient => 1,
            SmtpMode::Permanent => 2,
        };
        self.mode.store(v, Ordering::SeqCst);
    }

    /// Waits this long before accepting each message (a slow server).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every message accepted so far (held ones are not, until released or taken).
    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.lock().mails.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, accepts messages only while fewer than `n` in all were accepted; every
    /// further one is read to its end and held without a reply (its sender waits) until
    /// [`SmtpServer::release_held`], [`SmtpServer::take_held_unanswered`],
    /// [`SmtpServer::drop_held`] or [`SmtpServer::resume`]. A held message whose sender hangs
    /// up is dropped.
    pub fn pause_after(&self, n: usize) {
        self.lock().pause_after = Some(n);
    }

    /// How many messages are held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Waits until at least `n` messages are held at once.
    pub async fn wait_for_held(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait(timeout, |s| s.held.len() >= n, || format!("{n} held mails"))
            .await
    }

    /// Accepts the messages held now (they join [`SmtpServer::mails`], their senders get
    /// `250`); the pause goes on, so later ones are held again. Returns how many.
    pub fn release_held(&self) -> usize {
        let n = self.lock().decide_held(Decision::Answer);
        self.changed_now();
        n
    }

    /// Takes the messages held now as received (they join [`SmtpServer::mails`]) but never
    /// answers them: what a sender sees when the connection breaks between the end of its
    /// message and the server's `250`, though the server has the message. The pause goes on.
    /// Returns how many.
    pub fn take_held_unanswered(&self) -> usize {
        let n = self.lock().decide_held(Decision::Silence);
        self.changed_now();
        n
    }

    /// Hangs up on the messages held now without a reply: they were never accepted (what a
    /// sender sees when the server goes down before taking its message). The pause goes on.
    /// Returns how many.
    pub fn drop_held(&self) -> usize {
        let n = self.lock().decide_held(Decision::HangUp);
        self.changed_now();
        n
    }

    /// Ends the pause: accepts everything held and everything after.
    pub fn resume(&self) {
        {
            let mut state = self.lock();
            state.pause_after = None;
            state.decide_held(Decision::Answer);
        }
        self.changed_now();
    }

    fn changed_now(&self) {
        self.notify.send_modify(|n| *n += 1);
    }

    /// The time of every `MAIL FROM` received so far (accepted or not).
    pub fn attempts(&self) -> Vec<Instant> {
        self.lock().attempts.clone()
    }

    /// Waits until at least `n` messages were accepted; returns them.
    pub async fn wait_for_mails(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReceivedMail>> {
        self.wait(timeout, |s| s.mails.len() >= n, || format!("{n} mails"))
            .await?;
        Ok(self.mails())
    }

    /// Waits until at least `n` `MAIL FROM` attempts arrived.
    pub async fn wait_for_attempts(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait(
            timeout,
            |s| s.attempts.len() >= n,
            || format!("{n} attempts"),
        )
        .await
    }

    async fn wait(
        &self,
        timeout: Duration,
        done: impl Fn(&State) -> bool,
        what: impl Fn() -> String,
    ) -> anyhow::Result<()> {
        let mut changed = self.changed.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.lock()) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the SMTP server stopped"),
                Err(_) => {
                    let state = self.lock();
                    bail!(
                        "timed out after {timeout:?} waiting for {} \
                         (have {} mails, {} attempts, {} held)",
                        what(),
                        state.mails.len(),
                        state.attempts.len(),
                        state.held.len()
                    );
                }
            }
        }
    }

    /// Stops listening (the port then refuses connections; open sessions end).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Longest command line or data line accepted, in bytes (RFC 5321 allows 1000 for text).
const LINE_MAX_BYTES: usize = 64 * 1024;

async fn session(
    stream: TcpStream,
    state: &Mutex<State>,
    mode: &AtomicU8,
    delay_ms: &AtomicU64,
    changed: &watch::Sender<u64>,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 testkit ESMTP ready\r\n").await?;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut line = String::new();
    let bump = || changed.send_modify(|n| *n += 1);
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 || line.len() > LINE_MAX_BYTES {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-testkit\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 testkit\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .attempts
                .push(Instant::now());
            bump();
            match mode.load(Ordering::SeqCst) {
                1 => b"451 4.3.0 mail system busy, try again later\r\n",
                2 => b"550 5.7.1 refused\r\n",
                _ => {
                    mail_from = Some(path(&cmd["MAIL FROM:".len()..]));
                    rcpt_to.clear();
                    b"250 2.1.0 ok\r\n"
                }
            }
        } else if upper.starts_with("RCPT TO:") {
            if mail_from.is_none() {
                b"503 5.5.1 MAIL first\r\n"
            } else {
                rcpt_to.push(path(&cmd["RCPT TO:".len()..]));
                b"250 2.1.5 ok\r\n"
            }
        } else if upper == "DATA" {
            if rcpt_to.is_empty() {
                b"503 5.5.1 RCPT first\r\n"
            } else {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await? == 0 || line.len() > LINE_MAX_BYTES {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321 §4.5.2).
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(l);
                }
                let delay = delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let mail = ReceivedMail {
                    mail_from: mail_from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data,
                };
                let hold = {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    if s.pause_after.is_some_and(|n| s.mails.len() >= n) {
                        let (decided, decision) = oneshot::channel();
                        let id = s.next_held_id;
                        s.next_held_id += 1;
                        s.held.push(Held { id, mail, decided });
                        Some((id, decision))
                    } else {
                        s.mails.push(mail);
                        None
                    }
                };
                bump();
                if let Some((id, decision)) = hold {
                    tokio::select! {
                        decision = decision => match decision {
                            Ok(Decision::Answer) => {}
                            // Taken without an answer: say nothing until the sender hangs up.
                            Ok(Decision::Silence) => {
                                closed(&mut read).await;
                                return Ok(());
                            }
                            // Returning drops the connection.
                            Ok(Decision::HangUp) | Err(_) => return Ok(()),
                        },
                        () = closed(&mut read) => {
                            // The sender hung up first: the message was never accepted.
                            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                            s.held.retain(|h| h.id != id);
                            drop(s);
                            bump();
                            return Ok(());
                        }
                    }
                }
                b"250 2.0.0 queued\r\n"
            }
        } else if upper == "RSET" {
            mail_from = None;
            rcpt_to.clear();
            b"250 2.0.0 ok\r\n"
        } else if upper.starts_with("NOOP") {
            b"250 2.0.0 ok\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// Completes when the peer closes the connection (or it fails). A peer that sends something
/// instead is not waiting for an answer of ours to hang up: then this never completes (and the
/// bytes stay buffered for the session).
async fn closed(read: &mut BufReader<OwnedReadHalf>) {
    match read.fill_buf().await {
        Ok(bytes) if !bytes.is_empty() => std::future::pending().await,
        _ => {}
    }
}

/// `<a@b> PARAMS` → `a@b`.
fn path(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or("").to_owned(),
    }
}
