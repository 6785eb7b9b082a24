//! Gateway tests: token verification (`auth`), and real clients over real sockets against a
//! whole demo node started in-process on `127.0.0.1:0`: the official JS Socket.IO client
//! (`socketio_js`), the Rust Socket.IO client of lectern-testkit over WebSocket and polling
//! (`socketio_rust`), SSE with resume (`sse`), the long-poll route (`long_poll`), auth failures
//! on every transport (`auth_http`), bad input on every transport (`bad_input`), and the lean
//! WebSocket transport's own cases (`lean_ws`: routing, heartbeat, garbage frames, slow
//! consumers, attendance over both transports, shutdown). A client that opens with
//! `transport=websocket` is served by the lean transport, so every WebSocket case above runs
//! on it; polling runs on socketioxide.
//!
//! [`Demo`] is the shared harness: a demo node in a temp dir, its HTTP client, and tokens for
//! the demo class's people (students `student1`, `student2`, instructor `ada`).

mod admission;
mod auth;
mod auth_http;
mod bad_input;
mod compression;
mod lean_ws;
mod long_poll;
mod paging;
mod quotas;
mod socketio_js;
mod socketio_rust;
mod sse;

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use lectern_gateway::auth::{Claims, mint};
use lectern_node::{Config, DEMO_COHORT, DEMO_SESSION, Node};
use lectern_testkit::{Client, Http, Transport};
use serde_json::{Value, json};

use crate::support::TempDir;

/// The longest any one gateway test may run before it fails as hung.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs a test body under [`TEST_TIMEOUT`], so a hang fails instead of hanging the suite.
pub async fn within<T>(body: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .with_context(|| format!("the test did not finish within {TEST_TIMEOUT:?}"))?
}

/// A demo node running in-process, with what tests need to talk to it.
pub struct Demo {
    /// The node.
    pub node: Node,
    /// An HTTP client of the node.
    pub http: Http,
    /// The demo session's id.
    pub session: String,
    _dir: TempDir,
}

impl Demo {
    /// Starts a demo node with the default configuration.
    pub async fn start(tag: &str) -> anyhow::Result<Demo> {
        Self::start_with(tag, |_| {}).await
    }

    /// Starts a demo node after `edit` adjusts its configuration (limits …).
    pub async fn start_with(tag: &str, edit: impl FnOnce(&mut Config)) -> anyhow::Result<Demo> {
        let dir = TempDir::new(tag);
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            demo: true,
            ..Default::default()
        };
        edit(&mut config);
        let node = lectern_node::start(config)
            .await
            .context("start a demo node")?;
        let session = node
            .demo
            .as_ref()
            .map(|d| d.session.clone())
            .context("a demo node has demo links")?;
        assert_eq!(session, DEMO_SESSION);
        Ok(Demo {
            http: Http::new(node.http_addr),
            node,
            session,
            _dir: dir,
        })
    }

    /// A token for `user` with `role` in the demo cohort, valid for an hour.
    pub fn token(&self, user: &str, role: &str) -> String {
        self.mint(&claims(user, role, &[DEMO_COHORT], unix_now_s() + 3600))
    }

    /// Signs `claims` with the node's secret.
    pub fn mint(&self, claims: &Claims) -> String {
        // Invariant: a node's secret is never empty (config refuses short secrets).
        mint(&self.node.secret, claims).expect("minting with the node's secret succeeds")
    }

    /// A Socket.IO client connected with `token`.
    pub async fn sio(
        &self,
        transport: Transport,
        token: &str,
        name: &str,
    ) -> anyhow::Result<Client> {
        Client::connect(
            self.node.http_addr,
            transport,
            json!({ "token": token }),
            name,
        )
        .await
    }

    /// The session view as the instructor sees it.
    pub async fn session_view(&self) -> anyhow::Result<Value> {
        let token = self.token("ada", "instructor");
        let resp = self
            .http
            .get(&format!("/api/sessions/{}", self.session), Some(&token))
            .await?;
        anyhow::ensure!(
            resp.status == 200,
            "session view: {} {}",
            resp.status,
            resp.text()
        );
        resp.json()
    }

    /// Posts a session command by name (`qa.ask`) as the holder of `token`.
    pub async fn command(
        &self,
        token: &str,
        name: &str,
        body: Value,
    ) -> anyhow::Result<lectern_testkit::Response> {
        self.http
            .post_json(
                &format!("/api/sessions/{}/commands/{name}", self.session),
                Some(token),
                &body,
            )
            .await
    }

    /// Posts a session command that must succeed; its ack (`{ok, id, token}`).
    pub async fn command_ok(&self, token: &str, name: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self.command(token, name, body).await?;
        anyhow::ensure!(
            resp.status == 200,
            "{name}: {} {}",
            resp.status,
            resp.text()
        );
        let ack = resp.json()?;
        anyhow::ensure!(ack["ok"] == true, "{name}: {ack}");
        Ok(ack)
    }

    /// Stops the node cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.node.stop().await
    }
}

/// Claims for `user` with `role` in `cohorts`, expiring at `exp`.
pub fn claims(user: &str, role: &str, cohorts: &[&str], exp: u64) -> Claims {
    Claims {
        sub: user.to_owned(),
        name: format!("User {user}"),
        role: role.to_owned(),
        cohorts: cohorts.iter().map(|c| (*c).to_owned()).collect(),
        exp,
        iat: unix_now_s(),
        nbf: None,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `error.code` of a failed Socket.IO ack (`{ok: false, error: {code}}`), or a
/// description of what came instead.
pub fn ack_code(ack: &Value) -> String {
    if ack["ok"] == false {
        ack["error"]["code"]
            .as_str()
            .unwrap_or("no code")
            .to_owned()
    } else {
        format!("not an error ack: {ack}")
    }
}
