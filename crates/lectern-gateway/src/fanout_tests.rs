//! The fan-out on real loopback sockets: every event once and in order, also for a connection
//! that starts to follow while events flow; a reader that does not keep up is told to end; the
//! last follower's leaving ends the fan-out.

use std::sync::Arc;
use std::time::Duration;

use lectern_hub::Published;
use lectern_model::{Audience, CohortId, DocId};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

use super::{Fanouts, Framer, Outlet, Positions, Trouble};
use crate::sync::lock;

/// Frames every event as the same 16 KiB.
struct Big(Arc<[u8]>);

impl Framer for Big {
    fn frame(&self, _: &Published, _: &Positions<'_>) -> Option<Arc<[u8]>> {
        Some(self.0.clone())
    }
}

/// Frames an event as its token and a newline.
struct Line;

impl Framer for Line {
    fn frame(&self, e: &Published, _: &Positions<'_>) -> Option<Arc<[u8]>> {
        Some(Arc::from(format!("{}\n", e.token).into_bytes()))
    }
}

fn event(n: usize) -> Arc<Published> {
    let doc = DocId::Cohort(CohortId::new("c1").expect("id"));
    let payload: Arc<str> = Arc::from("{}");
    Arc::new(Published::new(
        doc,
        "test",
        n.to_string(),
        String::new(),
        vec![(Audience::All, payload)],
    ))
}

/// A connected pair: the server's end (for the outlet) and the client's.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (accepted.expect("accept").0, client.expect("connect"))
}

/// Reads lines from `client` until `n` arrived (or fails after 10 s).
async fn read_lines(client: &mut TcpStream, n: usize) -> Vec<String> {
    read_until(client, |text| text.lines().count() >= n).await
}

/// Reads lines until `last` arrived.
async fn read_lines_until(client: &mut TcpStream, last: &str) -> Vec<String> {
    read_until(client, |text| {
        text.ends_with('\n') && text.lines().last() == Some(last)
    })
    .await
}

/// Reads from `client` until what arrived is `done` (or fails after 10 s); its lines.
async fn read_until(client: &mut TcpStream, done: impl Fn(&str) -> bool) -> Vec<String> {
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !done(&text) {
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("lines in time")
            .expect("read");
        assert!(read > 0, "the outlet closed after {text:?}");
        text.push_str(std::str::from_utf8(&buf[..read]).expect("utf-8"));
    }
    text.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_and_in_order_even_for_a_follower_that_joins_while_they_flow() {
    let fanouts = Fanouts::default();
    let (tx, _) = broadcast::channel::<Arc<Published>>(1024);
    let (early_end, mut early) = pair().await;
    let early_outlet = Outlet::new(early_end, 4096, 1 << 24);
    let _early_tap = fanouts.follow("c", tx.subscribe(), None, &early_outlet, Box::new(Line));
    // Late followers start at different points of a stream that keeps flowing, while the
    // fan-out (on the other worker) passes over the followers it has.
    let mut late = Vec::new();
    let mut waiting = None;
    for n in 0..600 {
        if n == 300 {
            // A receiver made now, whose connection starts to follow after the last event.
            waiting = Some(tx.subscribe());
        }
        let _ = tx.send(event(n));
        if n % 70 == 1 {
            let (end, client) = pair().await;
            let outlet = Outlet::new(end, 4096, 1 << 24);
            let tap = fanouts.follow("c", tx.subscribe(), None, &outlet, Box::new(Line));
            late.push((client, tap));
        }
        if n % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(late.len() >= 8);
    let all: Vec<String> = (0..600).map(|n| n.to_string()).collect();
    assert_eq!(read_lines(&mut early, 600).await, all, "the first follower");
    // The fan-out has passed over every event: what the late receiver holds is sent by the
    // follow itself, with no event after it to wake the fan-out.
    let (end, mut client) = pair().await;
    let outlet = Outlet::new(end, 4096, 1 << 24);
    let rx = waiting.expect("a receiver");
    let _tap = fanouts.follow("c", rx, None, &outlet, Box::new(Line));
    assert_eq!(read_lines(&mut client, 300).await, all[300..].to_vec());
    for (client, _tap) in &mut late {
        let got = read_lines_until(client, "599").await;
        let start: usize = got[0].parse().expect("a number");
        assert_eq!(
            got,
            all[start..].to_vec(),
            "a late follower gets every event after its start, once, in order"
        );
    }
}

#[tokio::test]
async fn a_reader_that_does_not_keep_up_is_told_to_end_and_gets_nothing_more() {
    let fanouts = Fanouts::default();
    let (tx, _) = broadcast::channel::<Arc<Published>>(1 << 14);
    let (end, _client) = pair().await;
    // A queue of at most 8 frames; the client never reads, so the kernel's buffers fill first.
    let outlet = Outlet::new(end, 8, 1 << 24);
    let big = Big(Arc::from(vec![b'x'; 16 * 1024]));
    let _tap = fanouts.follow("c", tx.subscribe(), None, &outlet, Box::new(big));
    let sent = tokio::spawn(async move {
        for n in 0..10_000 {
            let _ = tx.send(event(n));
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        tx
    });
    loop {
        tokio::time::timeout(
            Duration::from_secs(10),
            std::future::poll_fn(|cx| outlet.poll_nudged(cx)),
        )
        .await
        .expect("the connection's task is nudged");
        match outlet.trouble() {
            Some(trouble) => {
                assert_eq!(trouble, Trouble::OverBudget);
                break;
            }
            None => continue,
        }
    }
    let queued = lock(&outlet.queue).out.len();
    let _tx = sent.await.expect("sender");
    assert_eq!(
        lock(&outlet.queue).out.len(),
        queued,
        "nothing is queued for a connection told to end"
    );
    assert!(queued <= 9, "the queue stopped at its budget: {queued}");
}

#[tokio::test]
async fn a_follower_that_falls_behind_its_channel_is_told_so() {
    let fanouts = Fanouts::default();
    let (tx, _) = broadcast::channel::<Arc<Published>>(4);
    let (end, _client) = pair().await;
    let outlet = Outlet::new(end, 4096, 1 << 24);
    let rx = tx.subscribe();
    // More events than the channel holds before the follower takes any.
    for n in 0..10 {
        let _ = tx.send(event(n));
    }
    let _tap = fanouts.follow("c", rx, None, &outlet, Box::new(Line));
    assert_eq!(outlet.trouble(), Some(Trouble::Lagged));
}

#[tokio::test]
async fn the_last_follower_leaving_ends_the_fanout_and_a_new_channel_under_the_same_key_gets_its_own()
 {
    let fanouts = Fanouts::default();
    let (old_tx, _) = broadcast::channel::<Arc<Published>>(16);
    let (end_a, mut client_a) = pair().await;
    let (end_b, mut client_b) = pair().await;
    let a = Outlet::new(end_a, 64, 1 << 20);
    let b = Outlet::new(end_b, 64, 1 << 20);
    let tap_a = fanouts.follow("k", old_tx.subscribe(), None, &a, Box::new(Line));
    // Another channel under the same key (a room made again): its own fan-out.
    let (new_tx, _) = broadcast::channel::<Arc<Published>>(16);
    let tap_b = fanouts.follow("k", new_tx.subscribe(), None, &b, Box::new(Line));
    assert_eq!(lock(&fanouts.0.map).get("k").map(Vec::len), Some(2));
    let _ = old_tx.send(event(1));
    let _ = new_tx.send(event(2));
    assert_eq!(read_lines(&mut client_a, 1).await, ["1"]);
    assert_eq!(read_lines(&mut client_b, 1).await, ["2"]);
    // The old channel's fan-out holds a receiver of it until its last follower leaves.
    assert_eq!(old_tx.receiver_count(), 3, "the tap's, the fan-out's two");
    drop(tap_a);
    assert_eq!(lock(&fanouts.0.map).get("k").map(Vec::len), Some(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while old_tx.receiver_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended fan-out let go of the channel"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(tap_b);
    assert!(lock(&fanouts.0.map).is_empty(), "no fan-out is left");
}
