//! Dev-only protocol clients for Lectern's tests: a Socket.IO client over WebSocket and
//! long-polling ([`sio`]), an HTTP/1.1 client with a server-sent-events reader ([`http`]), a
//! fault-injecting UDP proxy for the mesh ([`udp_proxy`]: drop, delay, partition, heal), and an
//! SMTP server that tests point a node at ([`smtp`]).
//!
//! They are written from the protocols, not from Lectern's code, so a test that passes with
//! them shows that any conforming client works; and they can send what a conforming client
//! would not (raw packets, oversized frames), which the bad-input tests need. This crate is a
//! dev-dependency of `tests/` only and depends on no Lectern crate.

pub mod http;
pub mod sio;
pub mod smtp;
pub mod udp_proxy;

pub use http::{Http, Response, SseEvent, SseItem, SseStream};
pub use sio::{Client, ConnectError, Cursor, ServerEvent, Transport};
pub use smtp::{ReceivedMail, SmtpMode, SmtpServer};
pub use udp_proxy::{ProxyStats, UdpProxy};
