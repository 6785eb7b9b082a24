//! `lectern drain` / `lectern undrain` against a running node: a drain tells each connected
//! client to reconnect elsewhere (`server:shutdown` with `reconnect: true`) and ends its
//! connection, waits until none is left, refuses new Socket.IO connections and streams with
//! `draining`, fails `/readyz`, and keeps answering REST and the admin API; an undrain takes
//! clients again.

use lectern_node::Config;
use lectern_testkit::{Client, Http, Transport};
use serde_json::json;

use super::{lectern, within};
use crate::support::TempDir;

const ADMIN_TOKEN: &str = "an-admin-token-for-the-drain-test";

/// Kills: a drain that leaves clients connected (the wait fails), a drain that does not
/// refuse new clients, `/readyz` still ready, an undrain that does not take clients again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_sends_its_clients_away_and_an_undrained_one_takes_them_again() {
    within(async {
        let dir = TempDir::new("ops-drain");
        let node = lectern_node::start(Config {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            demo: true,
            ..Config::default()
        })
        .await?;
        let http = Http::new(node.http_addr);
        let demo = node.demo.as_ref().expect("demo links");
        let token = demo
            .student
            .split("token=")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let auth = json!({ "token": token });
        let mut lean =
            Client::connect(node.http_addr, Transport::WebSocket, auth.clone(), "lean").await?;
        let mut polling =
            Client::connect(node.http_addr, Transport::Polling, auth.clone(), "polling").await?;
        for c in [&mut lean, &mut polling] {
            let ack = c.call("session:join", vec![json!(demo.session)]).await?;
            assert_eq!(ack["ok"], true, "{ack}");
        }
        assert_eq!(http.get("/readyz", None).await?.status, 200);

        let addr = node.http_addr.to_string();
        let admin = ["--http", &addr, "--admin-token", ADMIN_TOKEN];
        let drained = lectern(&[&["--json", "drain", "--wait-s", "20"][..], &admin].concat())
            .await?
            .expect_code(0)?;
        let v: serde_json::Value = serde_json::from_str(&drained.stdout)?;
        assert_eq!(v["connections"], 0, "{}", drained.stdout);
        for c in [&mut lean, &mut polling] {
            let told = c
                .wait_for("server:shutdown", |e| e.name == "server:shutdown")
                .await?;
            assert_eq!(told.data()["reconnect"], true, "{:?}", told.data());
            c.closed(std::time::Duration::from_secs(10)).await?;
        }
        let ready = http.get("/readyz", None).await?;
        assert_eq!(ready.status, 503, "{}", ready.text());
        let refused = Client::try_connect(
            node.http_addr,
            Transport::WebSocket,
            Some(auth.clone()),
            "late",
        )
        .await;
        assert!(refused.is_err(), "a new client was taken while draining");
        // REST and the admin API still answer.
        let session = format!("/api/sessions/{}", demo.session);
        assert_eq!(http.get(&session, Some(&token)).await?.status, 200);
        let status = lectern(&[&["--json", "status"][..], &admin].concat())
            .await?
            .expect_code(0)?;
        let v: serde_json::Value = serde_json::from_str(&status.stdout)?;
        assert_eq!(v["draining"], true, "{}", status.stdout);

        lectern(&[&["undrain"][..], &admin].concat())
            .await?
            .expect_code(0)?;
        assert_eq!(http.get("/readyz", None).await?.status, 200);
        let mut back = Client::connect(node.http_addr, Transport::WebSocket, auth, "back").await?;
        let ack = back.call("session:join", vec![json!(demo.session)]).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        back.disconnect().await;
        node.stop().await
    })
    .await
    .unwrap();
}
