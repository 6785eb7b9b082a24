//! Admission before authentication: how many connections may be open at once without having
//! proved who they are, in all and per client address.
//!
//! A connection is admitted when it is accepted, before a byte is read, and holds its place
//! until it authenticates or ends: a lean WebSocket until its Socket.IO `CONNECT` is accepted,
//! an SSE stream until it opens, any other connection (REST, polling, socketioxide) until its
//! first response is ready (its body read). Authenticated connections are counted by the
//! per-user caps of `limits.rs` instead. Past either cap a new connection is answered at once
//! with a fixed 503 (`node_busy` or `address_busy`) and closed, without reading it, so a flood
//! of idle or slow sockets from one address, or from many, costs a bounded number of file
//! descriptors and never starves the users already in.
//!
//! An Engine.IO polling session outlives the requests that carry it, so it takes a place of its
//! own (same caps) at its handshake (`GET /socket.io/?transport=polling` without a `sid`): the
//! place rides in the handshake request's extensions ([`PreauthSession`]), which the session
//! keeps, and is freed when its Socket.IO `CONNECT` is accepted or when the session ends (no
//! `CONNECT` within `connect_timeout_ms`). Past a cap the handshake gets the same 503, so a
//! flood of unauthenticated polling sessions costs a bounded amount of memory.
//!
//! The per-address table holds only addresses with a connection waiting (at most
//! `preauth_max` entries).
//!
//! Every request body is also read under one total deadline from the moment its head was in
//! ([`body_deadline`]): a client trickling a body a byte at a time gets 408 `body_timeout`
//! when it passes, however steadily it trickles.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::{Instant, Sleep};

use crate::lock;

/// Why a connection was not admitted; its `code()` is the stable error code the client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The node holds its limit of connections that have not authenticated.
    #[error("too many connections are waiting to authenticate; try again or another node")]
    NodeBusy,
    /// The client's address holds its limit of connections that have not authenticated.
    #[error("too many connections from your address are waiting to authenticate")]
    AddressBusy,
}

impl Refused {
    /// The stable error code.
    pub fn code(self) -> &'static str {
        match self {
            Refused::NodeBusy => "node_busy",
            Refused::AddressBusy => "address_busy",
        }
    }

    /// The whole HTTP response a refused connection gets: a 503 with a JSON error, closed.
    pub fn response(self) -> &'static [u8] {
        match self {
            Refused::NodeBusy => concat!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n",
                "retry-after: 5\r\nconnection: close\r\ncontent-length: 118\r\n\r\n",
                r#"{"error":{"code":"node_busy","message":"too many connections are waiting to authenticate; try again or another node"}}"#
            )
            .as_bytes(),
            Refused::AddressBusy => concat!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n",
                "retry-after: 5\r\nconnection: close\r\ncontent-length: 112\r\n\r\n",
                r#"{"error":{"code":"address_busy","message":"too many connections from your address are waiting to authenticate"}}"#
            )
            .as_bytes(),
        }
    }
}

/// The pre-authentication caps of a node.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Connections waiting to authenticate, in all.
    preauth_max: usize,
    /// Connections waiting to authenticate, per client address.
    preauth_per_address_max: usize,
    waiting: Mutex<Waiting>,
    /// Keys the per-address table: a keyed hash, so nobody can pick an address that shares
    /// another's count.
    hasher: std::collections::hash_map::RandomState,
    refused_node: AtomicU64,
    refused_address: AtomicU64,
}

#[derive(Debug, Default)]
struct Waiting {
    total: usize,
    /// By [`Admission::key`] of the address.
    per_address: HashMap<u64, usize>,
}

/// A connection's place among those waiting to authenticate; dropping it frees the place.
/// Sixteen bytes: a lean WebSocket holds it in every socket until its `CONNECT`.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    /// The address's [`Admission::key`].
    key: u64,
}

impl Admitted {
    /// Who this place was given to, to admit more from the same address after it is freed.
    pub(crate) fn source(&self) -> Source {
        Source {
            admission: self.admission.clone(),
            key: self.key,
        }
    }
}

/// A client address as admission knows it (its keyed hash).
#[derive(Debug, Clone)]
pub(crate) struct Source {
    admission: Arc<Admission>,
    key: u64,
}

impl Source {
    /// Another place for the same address (an Engine.IO polling session's), or why not.
    pub(crate) fn admit(&self) -> Result<Admitted, Refused> {
        self.admission.admit_key(self.key)
    }
}

/// An Engine.IO polling session's place among those waiting to authenticate, carried in its
/// handshake request's extensions (which the session keeps): freed by [`PreauthSession::release`]
/// when its `CONNECT` is accepted, or when the session ends.
#[derive(Debug, Clone)]
pub(crate) struct PreauthSession(Arc<Mutex<Option<Admitted>>>);

impl PreauthSession {
    /// Holds `place` for the session.
    pub(crate) fn new(place: Admitted) -> PreauthSession {
        PreauthSession(Arc::new(Mutex::new(Some(place))))
    }

    /// The session authenticated: its place is freed.
    pub(crate) fn release(&self) {
        drop(lock(&self.0).take());
    }
}

impl Admission {
    pub(crate) fn new(preauth_max: usize, preauth_per_address_max: usize) -> Admission {
        Admission {
            preauth_max,
            preauth_per_address_max,
            waiting: Mutex::new(Waiting::default()),
            hasher: std::collections::hash_map::RandomState::new(),
            refused_node: AtomicU64::new(0),
            refused_address: AtomicU64::new(0),
        }
    }

    /// The per-address table's key of `address`.
    fn key(&self, address: IpAddr) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(address)
    }

    /// Admits a connection from `address`, or says why not (and counts the refusal).
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admitted, Refused> {
        self.admit_key(self.key(address))
    }

    /// [`Admission::admit`] by the address's key.
    fn admit_key(self: &Arc<Self>, key: u64) -> Result<Admitted, Refused> {
        let mut w = lock(&self.waiting);
        if w.total >= self.preauth_max {
            self.refused_node.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::NodeBusy);
        }
        let n = w.per_address.get(&key).copied().unwrap_or(0);
        if n >= self.preauth_per_address_max {
            self.refused_address.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::AddressBusy);
        }
        w.per_address.insert(key, n + 1);
        w.total += 1;
        Ok(Admitted {
            admission: self.clone(),
            key,
        })
    }

    /// Connections waiting to authenticate now.
    pub(crate) fn waiting(&self) -> usize {
        lock(&self.waiting).total
    }

    fn release(&self, key: u64) {
        let mut w = lock(&self.waiting);
        w.total = w.total.saturating_sub(1);
        if let Some(n) = w.per_address.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                w.per_address.remove(&key);
            }
        }
    }

    /// Appends this section of `/metrics`.
    pub(crate) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP lectern_preauth_connections Connections accepted, and Engine.IO polling sessions opened, that have not authenticated yet.\n\
             # TYPE lectern_preauth_connections gauge\n\
             lectern_preauth_connections {}",
            self.waiting()
        );
        let _ = writeln!(
            out,
            "# HELP lectern_preauth_refused_total Connections refused before authentication, by the cap they hit.\n\
             # TYPE lectern_preauth_refused_total counter\n\
             lectern_preauth_refused_total{{cap=\"node\"}} {}\n\
             lectern_preauth_refused_total{{cap=\"address\"}} {}",
            self.refused_node.load(Ordering::Relaxed),
            self.refused_address.load(Ordering::Relaxed),
        );
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(self.key);
    }
}

/// The error a request body gives once its deadline passed (the extractors answer it with 408
/// `body_timeout`: see [`is_body_timeout`]).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub(crate) struct BodyTimedOut;

/// A request body that fails with [`BodyTimedOut`] once `deadline` passes, however it trickles.
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    /// Armed at the first read that has to wait (bodies read at once never arm a timer).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: every request's body must be in within `timeout` of its head.
pub(crate) async fn body_deadline(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let deadline = Instant::now() + timeout;
    let request = request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline,
            sleep: None,
        })
    });
    next.run(request).await
}

/// Whether `e` (or an error it wraps) is a body that missed its deadline.
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(e) = at {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        at = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Kills: the per-address cap `>=` → `>`, the node cap `>=` → `>`, a release that frees
    /// nothing or frees another address's place.
    #[test]
    fn caps_hold_per_address_and_in_all_and_a_dropped_place_is_free_again() {
        let a = Arc::new(Admission::new(3, 2));
        let one = a.admit(addr(1)).unwrap();
        let _two = a.admit(addr(1)).unwrap();
        assert_eq!(a.admit(addr(1)).unwrap_err(), Refused::AddressBusy);
        let _three = a.admit(addr(2)).unwrap();
        assert_eq!(a.admit(addr(3)).unwrap_err(), Refused::NodeBusy);
        assert_eq!(a.waiting(), 3);
        drop(one);
        assert_eq!(a.waiting(), 2);
        let _again = a.admit(addr(1)).unwrap();
        assert_eq!(a.admit(addr(4)).unwrap_err(), Refused::NodeBusy);
        let mut text = String::new();
        a.render(&mut text);
        assert!(text.contains("lectern_preauth_connections 3"), "{text}");
        assert!(
            text.contains("lectern_preauth_refused_total{cap=\"node\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lectern_preauth_refused_total{cap=\"address\"} 1"),
            "{text}"
        );
    }

    /// The table keeps no address once its connections are gone (it never grows with the
    /// number of addresses seen).
    #[test]
    fn an_address_leaves_the_table_with_its_last_connection() {
        let a = Arc::new(Admission::new(100, 100));
        let places: Vec<_> = (0..50).map(|i| a.admit(addr(i)).unwrap()).collect();
        assert_eq!(lock(&a.waiting).per_address.len(), 50);
        drop(places);
        assert_eq!(lock(&a.waiting).per_address.len(), 0);
        assert_eq!(a.waiting(), 0);
    }

    /// A body that stops arriving fails with [`BodyTimedOut`] at its deadline; one that is
    /// complete is read whole even after it. Kills: a deadline never armed, an error that is
    /// not recognised as a timeout.
    #[tokio::test]
    async fn a_trickling_body_fails_at_its_deadline_and_a_whole_one_does_not() {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut slow = DeadlineBody {
            inner: Body::from_stream(stream),
            deadline,
            sleep: None,
        };
        tx.send(Ok("a".into())).await.unwrap();
        let first = slow.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let err = slow.frame().await.unwrap().unwrap_err();
        assert!(is_body_timeout(err.as_ref()), "{err}");
        assert!(Instant::now() >= deadline);
        let whole = DeadlineBody {
            inner: Body::from("all here"),
            deadline: Instant::now(),
            sleep: None,
        };
        let bytes = whole.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "all here");
        drop(tx);
    }

    /// The fixed responses are well-formed: their `content-length` is their body's length and
    /// the body is the JSON error with the code.
    #[test]
    fn refusal_responses_are_complete_http() {
        for r in [Refused::NodeBusy, Refused::AddressBusy] {
            let text = std::str::from_utf8(r.response()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{r:?}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"]["code"], r.code());
        }
    }
}
