//! The operator's surface on its own listener: with `admin_http` set, `/metrics` and `/admin/*`
//! answer there (and `lectern` reaches them there) and the public listener answers 404 for
//! them, while serving the class as before; the admin listener serves no client route. The key
//! loads from the file and the environment, and a stopped node frees the port.

use lectern_node::Config;
use lectern_testkit::Http;

use super::lectern;
use super::within;
use crate::config::{load, write_file};
use crate::support::TempDir;

const ADMIN_TOKEN: &str = "an-admin-token-for-the-listener-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_admin_move_to_the_admin_listener_and_the_public_one_hides_them() {
    within(async {
        let dir = TempDir::new("ops-admin-listener");
        let node = lectern_node::start(Config {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            admin_http: Some("127.0.0.1:0".parse()?),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            demo: true,
            ..Config::default()
        })
        .await?;
        let admin_addr = node.admin_addr.expect("an admin listener");
        assert_ne!(admin_addr, node.http_addr);
        let public = Http::new(node.http_addr);
        let admin = Http::new(admin_addr);

        // Public: the class is served, the operator's routes are not there.
        assert_eq!(public.get("/readyz", None).await?.status, 200);
        let demo = node.demo.as_ref().expect("demo links");
        let token = demo
            .student
            .split("token=")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let session = format!("/api/sessions/{}", demo.session);
        assert_eq!(public.get(&session, Some(&token)).await?.status, 200);
        for path in ["/metrics", "/admin/status", "/admin/jobs", "/admin/peers"] {
            let resp = public.get(path, Some(ADMIN_TOKEN)).await?;
            assert_eq!(
                resp.status,
                404,
                "{path} on the public listener: {}",
                resp.text()
            );
        }

        // Admin: metrics and the admin API; no client route.
        let metrics = admin.get("/metrics", None).await?;
        assert_eq!(metrics.status, 200);
        assert!(
            metrics.text().contains("lectern_jobs_pending"),
            "{}",
            metrics.text()
        );
        assert_eq!(admin.get("/healthz", None).await?.status, 200);
        assert_eq!(admin.get(&session, Some(&token)).await?.status, 404);
        let a = admin_addr.to_string();
        let status = lectern(&[
            "--json",
            "status",
            "--http",
            &a,
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .await?
        .expect_code(0)?
        .json()?;
        assert!(status["nodeId"].is_string(), "{status}");
        lectern(&["jobs", "list", "--http", &a, "--admin-token", ADMIN_TOKEN])
            .await?
            .expect_code(0)?;
        // Aimed at the public address, lectern says the admin API is not there (exit 4).
        let p = node.http_addr.to_string();
        let off = lectern(&["jobs", "list", "--http", &p, "--admin-token", ADMIN_TOKEN])
            .await?
            .expect_code(4)?;
        assert!(off.stderr.contains("admin address"), "{off:?}");

        // Stopping the node frees the admin port.
        node.stop().await?;
        std::net::TcpListener::bind(admin_addr)?;
        Ok(())
    })
    .await
    .unwrap();
}

#[test]
fn admin_http_loads_from_the_file_and_the_environment_and_is_off_by_default() -> anyhow::Result<()>
{
    let dir = TempDir::new("ops-admin-http-config");
    let file = write_file(dir.path(), "admin_http = \"127.0.0.1:9464\"\n");
    assert_eq!(
        load(&file, &[])?.admin_http,
        Some("127.0.0.1:9464".parse()?)
    );
    let env = load(&file, &[("LECTERN_ADMIN_HTTP", "10.0.0.5:9500")])?;
    assert_eq!(env.admin_http, Some("10.0.0.5:9500".parse()?));
    let bad = write_file(dir.path(), "admin_http = \"nowhere\"\n");
    let err = format!("{:#}", load(&bad, &[]).expect_err("a bad address"));
    assert!(err.contains("admin_http"), "{err}");
    assert_eq!(Config::default().admin_http, None);
    Ok(())
}
