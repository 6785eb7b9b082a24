//! Byte-stream clients: the SSE client of the node, and the floor's plain-socket client. Both
//! read into one small fixed buffer and scan it for probes; neither parses anything else.
//!
//! The SSE client sends `GET /api/stream/sessions/{id}?access_token=…` over HTTP/1.1, checks
//! for `200`, and counts as joined once the first event (`event: state`, which ends at the
//! first blank line: JSON data never contains a raw newline) has arrived. After that every
//! probe in the stream is a delivery; the chunked transfer encoding around each event does not
//! matter, since an event is one chunk and a marker never straddles chunk framing.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::probe::{self, Probe, Tally};
use super::sio::tcp_connect;
use super::{ConnectError, ConnectFailure};

/// The read buffer of every byte-stream client: more than one `qa:new` event.
const READ_BUFFER_BYTES: usize = 1024;

/// Longest response head accepted.
const HEAD_MAX_BYTES: usize = 8 * 1024;

/// A connected stream that has passed its start (response head and first event, or the floor's
/// go-ahead byte), with the bytes already read past that start.
pub struct StreamClient {
    stream: TcpStream,
    buf: Box<[u8]>,
    filled: usize,
}

impl StreamClient {
    /// Opens the session's SSE stream with `token` and waits for its first event.
    pub async fn sse(
        node: SocketAddr,
        source: Ipv4Addr,
        session: &str,
        token: &str,
    ) -> Result<StreamClient, ConnectError> {
        let mut stream = tcp_connect(node, source).await?;
        let request = format!(
            "GET /api/stream/sessions/{session}?access_token={token} HTTP/1.1\r\n\
             Host: {node}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| ConnectError::new(ConnectFailure::Tcp, e.to_string()))?;

        // The response head.
        let mut head = Vec::with_capacity(512);
        let mut buf = vec![0u8; READ_BUFFER_BYTES].into_boxed_slice();
        let body_start = loop {
            let n = read(&mut stream, &mut buf).await?;
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = probe::find(&head, b"\r\n\r\n") {
                break end + 4;
            }
            if head.len() > HEAD_MAX_BYTES {
                return Err(ConnectError::new(
                    ConnectFailure::Protocol,
                    "no end of the response head",
                ));
            }
        };
        let status = head.split(|&b| b == b'\r').next().unwrap_or_default();
        if !status.starts_with(b"HTTP/1.1 200") {
            let body = String::from_utf8_lossy(&head[body_start..]);
            return Err(ConnectError::new(
                ConnectFailure::Refused,
                format!("{} {}", String::from_utf8_lossy(status), body.trim()),
            ));
        }

        // The first event: everything up to the first blank line. Only its last byte matters
        // across reads (a `\n` that a `\n` at the start of the next read completes).
        let mut rest = head.split_off(body_start);
        let mut last_newline = false;
        loop {
            if let Some(end) = first_blank_line(&rest, last_newline) {
                let after = &rest[end..];
                // Whatever followed in the same read stays for `listen`; it is small, since
                // nothing is asked before every client has joined.
                let keep = after.len().min(buf.len());
                buf[..keep].copy_from_slice(&after[after.len() - keep..]);
                return Ok(StreamClient {
                    stream,
                    buf,
                    filled: keep,
                });
            }
            last_newline = rest.last() == Some(&b'\n');
            let n = read(&mut stream, &mut buf).await?;
            rest.clear();
            rest.extend_from_slice(&buf[..n]);
        }
    }

    /// Connects to the floor server as a subscriber of `group` (`W` or `S`) and waits for its
    /// go-ahead byte, sent once it is subscribed.
    pub async fn floor(
        floor: SocketAddr,
        source: Ipv4Addr,
        group: u8,
    ) -> Result<StreamClient, ConnectError> {
        let mut stream = tcp_connect(floor, source).await?;
        stream
            .write_all(&[group])
            .await
            .map_err(|e| ConnectError::new(ConnectFailure::Tcp, e.to_string()))?;
        let mut ok = [0u8; 1];
        stream
            .read_exact(&mut ok)
            .await
            .map_err(|e| ConnectError::new(ConnectFailure::Closed, e.to_string()))?;
        Ok(StreamClient {
            stream,
            buf: vec![0u8; READ_BUFFER_BYTES].into_boxed_slice(),
            filled: 0,
        })
    }

    /// Reads until `stop` turns true or the server ends the stream, recording every probe.
    pub async fn listen(mut self, probe: &Probe, mut stop: watch::Receiver<bool>) -> Tally {
        let mut tally = Tally::new(probe);
        loop {
            // Keep at most a marker's worth of unfinished bytes; more means garbage.
            if self.filled > probe::MARKER_LEN_MAX {
                let from = self.filled - probe::MARKER_LEN_MAX;
                self.buf.copy_within(from..self.filled, 0);
                self.filled = probe::MARKER_LEN_MAX;
            }
            let carried = self.filled;
            let read = tokio::select! {
                r = self.stream.read(&mut self.buf[carried..]) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let now_us = probe.now_us();
            let n = match read {
                Ok(0) => {
                    tally.cut_off.get_or_insert_with(|| "closed".to_owned());
                    break;
                }
                Ok(n) => n,
                Err(e) => {
                    tally.cut_off.get_or_insert_with(|| format!("error: {e}"));
                    break;
                }
            };
            self.filled += n;
            let data = &self.buf[..self.filled];
            if tally.frame_len.is_none() && carried == 0 && probe::count(data) == 1 {
                tally.frame_len = Some(n);
            }
            if probe::find(data, b"event: error").is_some() {
                tally.cut_off = Some(String::from_utf8_lossy(data).into_owned());
            }
            let done = probe::scan(data, |seq, sent_us| {
                tally.record(probe, seq, sent_us, now_us);
            });
            self.buf.copy_within(done..self.filled, 0);
            self.filled -= done;
        }
        tally
    }
}

/// Where the first blank line (`\n\n`) of `data` ends, given whether the previous read ended
/// with `\n`.
fn first_blank_line(data: &[u8], last_newline: bool) -> Option<usize> {
    if last_newline && data.first() == Some(&b'\n') {
        return Some(1);
    }
    probe::find(data, b"\n\n").map(|i| i + 2)
}

async fn read(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, ConnectError> {
    match stream.read(buf).await {
        Ok(0) => Err(ConnectError::new(
            ConnectFailure::Closed,
            "closed by the server",
        )),
        Ok(n) => Ok(n),
        Err(e) => Err(ConnectError::new(ConnectFailure::Closed, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_line_across_reads() {
        assert_eq!(
            first_blank_line(b"event: state\ndata: {}\n\nrest", false),
            Some(23)
        );
        assert_eq!(first_blank_line(b"\nrest", true), Some(1));
        assert_eq!(first_blank_line(b"\nrest", false), None);
    }
}
