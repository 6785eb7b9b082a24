//! JSON answers are compressed by `Accept-Encoding` (br, gzip) with `Vary: accept-encoding`,
//! and decode to the same JSON; small answers, other types and answers with an `ETag` go out
//! as they are.

use std::io::Read;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Demo, within};

fn header<'r>(r: &'r lectern_testkit::Response, name: &str) -> Option<&'r str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Kills: no compression layer, a layer that ignores `Accept-Encoding`, a body that does not
/// decode to the identity answer, compression of small or non-JSON answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_views_are_compressed_by_accept_encoding_and_decode_to_the_same_json()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("compression", |c| c.limits.command_burst = 1000).await?;
        let ada = demo.token("ada", "instructor");
        // A view worth compressing.
        for i in 0..20 {
            demo.command_ok(
                &ada,
                "broadcast.send",
                json!({"text": format!("announcement number {i}, long enough to be worth it")}),
            )
            .await?;
        }
        let path = format!("/api/sessions/{}", demo.session);
        let auth = format!("Bearer {ada}");
        let get = |encoding: &'static str| {
            let (path, auth) = (path.clone(), auth.clone());
            let http = demo.http;
            async move {
                http.send(
                    "GET",
                    &path,
                    &[("authorization", &auth), ("accept-encoding", encoding)],
                    None,
                    Duration::from_secs(10),
                )
                .await
            }
        };
        let identity = get("identity").await?;
        assert_eq!(identity.status, 200, "{}", identity.text());
        assert_eq!(header(&identity, "content-encoding"), None);
        let plain: Value = serde_json::from_slice(&identity.body)?;
        assert!(identity.body.len() > 1024, "{} bytes", identity.body.len());

        let br = get("br").await?;
        assert_eq!(header(&br, "content-encoding"), Some("br"));
        assert!(
            header(&br, "vary").is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
        );
        let mut decoded = Vec::new();
        brotli::Decompressor::new(br.body.as_slice(), 4096).read_to_end(&mut decoded)?;
        assert_eq!(serde_json::from_slice::<Value>(&decoded)?, plain);
        assert!(
            br.body.len() < identity.body.len() / 2,
            "{} of {}",
            br.body.len(),
            identity.body.len()
        );

        let gz = get("gzip").await?;
        assert_eq!(header(&gz, "content-encoding"), Some("gzip"));
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(gz.body.as_slice()).read_to_end(&mut decoded)?;
        assert_eq!(serde_json::from_slice::<Value>(&decoded)?, plain);

        // Small JSON and other types go out as they are.
        let small = demo
            .http
            .send(
                "GET",
                "/readyz",
                &[("accept-encoding", "br")],
                None,
                Duration::from_secs(10),
            )
            .await?;
        assert_eq!(header(&small, "content-encoding"), None);
        Ok(())
    })
    .await
}
