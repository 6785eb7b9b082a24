//! A small HTTP/1.1 client for tests, on hyper's client connection (the hyper axum serves
//! with, so no second HTTP stack enters the build): one request per TCP connection, a whole
//! response body as bytes, and a server-sent-events reader that parses `text/event-stream`
//! as a browser's EventSource does (fields `event`, `data`, `id`; `:` comments).
//!
//! Every call has a timeout, so a server that never answers fails the test instead of hanging
//! it. Nothing here retries: a test sees exactly what the server did.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long [`Http`] waits for a whole response, unless told otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A client of one server.
#[derive(Debug, Clone, Copy)]
pub struct Http {
    addr: SocketAddr,
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "parse a {} response body as JSON: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `error.code` of a JSON error body (`{error: {code, message}}`), if there is one.
    pub fn error_code(&self) -> Option<String> {
        let v = self.json().ok()?;
        v["error"]["code"].as_str().map(str::to_owned)
    }
}

impl Http {
    /// A client of the server at `addr`.
    pub fn new(addr: SocketAddr) -> Http {
        Http { addr }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`, with a bearer token if given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<Response> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send("GET", path, &headers, None, REQUEST_TIMEOUT)
            .await
    }

    /// `POST path` with a JSON body, with a bearer token if given.
    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<Response> {
        self.post_raw(path, token, body.to_string().into_bytes())
            .await
    }

    /// `POST path` with raw bytes declared as JSON (for malformed and oversized bodies).
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<Response> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        self.send("POST", path, &headers, Some(body), REQUEST_TIMEOUT)
            .await
    }

    /// Any request; `Host` and `Content-Length` are added.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<Response> {
        let what = format!("{method} {path}");
        let exchange = async {
            let (resp, conn) = self.start(method, path, headers, body).await?;
            let status = resp.status().as_u16();
            let headers = header_list(resp.headers());
            let body = resp
                .into_body()
                .collect()
                .await
                .context("read the response body")?
                .to_bytes()
                .to_vec();
            conn.abort();
            anyhow::Ok(Response {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .with_context(|| format!("{what}: no whole response within {timeout:?}"))?
            .with_context(|| what.clone())
    }

    /// Opens a server-sent-events stream at `path` with extra request headers (a
    /// `Last-Event-ID`, an `Authorization`). A response other than 200 is returned whole, as
    /// `Err(response)`, so a test can check a refusal's status and code.
    pub async fn sse(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Result<SseStream, Response>> {
        let mut all = vec![("accept", "text/event-stream")];
        all.extend_from_slice(headers);
        let opened = async {
            let (resp, conn) = self.start("GET", path, &all, None).await?;
            let status = resp.status().as_u16();
            let headers = header_list(resp.headers());
            if status != 200 {
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .context("read the refusal body")?
                    .to_bytes()
                    .to_vec();
                conn.abort();
                return anyhow::Ok(Err(Response {
                    status,
                    headers,
                    body,
                }));
            }
            let content_type = headers
                .iter()
                .find(|(n, _)| n == "content-type")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            if !content_type.starts_with("text/event-stream") {
                conn.abort();
                bail!("GET {path}: 200 with content-type {content_type:?}, not an event stream");
            }
            Ok(Ok(SseStream {
                body: resp.into_body(),
                buf: Vec::new(),
                pending: PendingEvent::default(),
                ready: std::collections::VecDeque::new(),
                conn,
            }))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, opened)
            .await
            .with_context(|| format!("GET {path}: no response head within {REQUEST_TIMEOUT:?}"))?
    }

    /// Sends a request on a fresh connection; the response head and the connection's task.
    async fn start(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(hyper::Response<Incoming>, JoinHandle<()>)> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect to {}", self.addr))?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let body = body.unwrap_or_default();
        if method != "GET" {
            req = req.header("content-length", body.len().to_string());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .context("build the request")?;
        let resp = sender.send_request(req).await.context("send the request")?;
        Ok((resp, conn))
    }
}

fn header_list(h: &hyper::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event.
    Event(SseEvent),
    /// A comment line (`: text`); keep-alives are comments.
    Comment(String),
}

/// A dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (EventSource's default, `message`, when absent).
    pub event: String,
    /// `id:`, if the event carried one.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.data)
            .with_context(|| format!("parse the data of SSE event {:?}", self.event))
    }
}

#[derive(Default)]
struct PendingEvent {
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

/// An open event stream. Dropping it closes the connection (a client going away).
pub struct SseStream {
    body: Incoming,
    buf: Vec<u8>,
    pending: PendingEvent,
    ready: std::collections::VecDeque<SseItem>,
    conn: JoinHandle<()>,
}

impl SseStream {
    /// The next event or comment; `None` when the server ended the stream.
    pub async fn next_item(&mut self, timeout: Duration) -> anyhow::Result<Option<SseItem>> {
        tokio::time::timeout(timeout, self.next_item_inner())
            .await
            .with_context(|| format!("nothing on the event stream within {timeout:?}"))?
    }

    /// The next event, skipping comments; an error if the stream ends first.
    pub async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                Some(SseItem::Event(e)) => return Ok(e),
                Some(SseItem::Comment(_)) => {}
                None => bail!("the server ended the event stream"),
            }
        }
    }

    async fn next_item_inner(&mut self) -> anyhow::Result<Option<SseItem>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(Some(item));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.context("read the event stream")?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
                self.parse_lines()?;
            }
        }
    }

    /// Moves every complete line of the buffer into events and comments.
    fn parse_lines(&mut self) -> anyhow::Result<()> {
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).context("an event-stream line is not UTF-8")?;
            if line.is_empty() {
                let p = std::mem::take(&mut self.pending);
                if p.event.is_some() || p.id.is_some() || p.data.is_some() {
                    self.ready.push_back(SseItem::Event(SseEvent {
                        event: p.event.unwrap_or_else(|| "message".to_owned()),
                        id: p.id,
                        data: p.data.unwrap_or_default(),
                    }));
                }
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                self.ready
                    .push_back(SseItem::Comment(comment.trim_start().to_owned()));
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "event" => self.pending.event = Some(value),
                "id" => self.pending.id = Some(value),
                "data" => match &mut self.pending.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => self.pending.data = Some(value),
                },
                // `retry` and unknown fields are ignored, as EventSource does.
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
