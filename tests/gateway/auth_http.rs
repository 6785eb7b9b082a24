//! Auth failures on every transport of a running node: no token, a bad signature, an expired
//! token, a token for another cohort, and a student attempting instructor actions each get the
//! right status and code on REST (header token), SSE (`?access_token=`) and the Socket.IO
//! handshake (`auth: {token}`) or ack; 401 and 403 stay distinct; and the session is unchanged
//! afterwards (same views, same resume token: no change at all was committed). A socket whose
//! token expires is disconnected, told why.

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lectern_gateway::auth::mint;
use lectern_node::DEMO_COHORT;
use lectern_testkit::{Client, ConnectError, Transport};
use serde_json::{Value, json};

use super::{Demo, ack_code, claims, unix_now_s, within};

/// The session view without attendance (connections come and go).
fn without_attendance(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("attendance");
    }
    v
}

/// The session view (without attendance: connections come and go) and the cohort view, as
/// the instructor sees them; refused requests must leave both as they were.
async fn views(demo: &Demo) -> anyhow::Result<(Value, Value)> {
    let session = without_attendance(demo.session_view().await?);
    let inst = demo.token("ada", "instructor");
    let cohort = demo
        .http
        .get(&format!("/api/cohorts/{DEMO_COHORT}"), Some(&inst))
        .await?;
    anyhow::ensure!(cohort.status == 200, "cohort view: {}", cohort.text());
    Ok((session, cohort.json()?))
}

/// A refused token and what every transport must answer.
struct Case {
    what: &'static str,
    token: Option<String>,
    status: u16,
    code: &'static str,
}

/// `claims` (any JSON) signed with the demo node's secret, for claims [`claims`] cannot say.
fn raw_token(demo: &Demo, claims: &Value) -> String {
    let key = EncodingKey::from_secret(&demo.node.secret).expect("the node's secret is non-empty");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("HS256 signing works")
}

fn cases(demo: &Demo) -> Vec<Case> {
    let now = unix_now_s();
    let student = |extra: Value| {
        let mut c = json!({"sub": "student1", "role": "student", "cohorts": [DEMO_COHORT],
            "exp": now + 3600});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        raw_token(demo, &c)
    };
    let forged = mint(
        b"not-the-node-secret-0123456789ab",
        &claims("student1", "student", &[DEMO_COHORT], now + 3600),
    )
    .expect("minting with a non-empty secret succeeds");
    vec![
        Case {
            what: "no token",
            token: None,
            status: 401,
            code: "missing_token",
        },
        Case {
            what: "bad signature",
            token: Some(forged),
            status: 401,
            code: "bad_signature",
        },
        Case {
            what: "expired",
            // Past the 30 s leeway.
            token: Some(demo.mint(&claims("student1", "student", &[DEMO_COHORT], now - 3600))),
            status: 401,
            code: "token_expired",
        },
        Case {
            what: "not valid yet",
            token: Some(student(json!({"nbf": now + 3600}))),
            status: 401,
            code: "token_not_yet_valid",
        },
        Case {
            what: "issued in the future",
            token: Some(student(json!({"iat": now + 3600}))),
            status: 401,
            code: "token_not_yet_valid",
        },
        Case {
            // An `exp` near u64::MAX once overflowed a connection's deadline.
            what: "lives for ever",
            token: Some(student(json!({"exp": u64::MAX}))),
            status: 401,
            code: "token_too_long",
        },
        Case {
            what: "lives past the one-year-and-a-day maximum",
            token: Some(student(json!({"exp": now + 367 * 86_400}))),
            status: 401,
            code: "token_too_long",
        },
        Case {
            what: "other cohort",
            token: Some(demo.mint(&claims(
                "student1",
                "student",
                &["other-cohort"],
                now + 3600,
            ))),
            status: 403,
            code: "not_member",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_the_right_status_on_every_transport_and_change_nothing()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("auth-http").await?;
        let s = demo.session.clone();
        let before = views(&demo).await?;
        for case in cases(&demo) {
            let token = case.token.as_deref();
            let want = (case.status, Some(case.code));
            let what = case.what;

            // REST: a view and a command.
            let r = demo.http.get(&format!("/api/sessions/{s}"), token).await?;
            assert_eq!((r.status, r.error_code().as_deref()), want, "{what}: GET view: {}", r.text());
            let r = demo
                .http
                .post_json(&format!("/api/sessions/{s}/commands/qa.ask"), token, &json!({"text": "let me in"}))
                .await?;
            assert_eq!((r.status, r.error_code().as_deref()), want, "{what}: POST qa.ask: {}", r.text());
            let r = demo
                .http
                .post_json("/api/progress", token, &json!({"cohort": DEMO_COHORT, "student": "student1", "lesson": "l1", "status": "completed"}))
                .await?;
            assert_eq!((r.status, r.error_code().as_deref()), want, "{what}: POST progress: {}", r.text());

            // SSE, with the token where EventSource puts it.
            let progress = format!("/api/stream/progress/student1?cohort={DEMO_COHORT}");
            for path in [format!("/api/stream/sessions/{s}?"), format!("{progress}&")] {
                let url = match token {
                    Some(t) => format!("{path}access_token={t}"),
                    None => path.clone(),
                };
                let r = demo.http.sse(&url, &[]).await?;
                let r = r.err().with_context(|| format!("{what}: {path} was opened"))?;
                assert_eq!((r.status, r.error_code().as_deref()), want, "{what}: {path}: {}", r.text());
            }

            // Socket.IO: a bad token is refused at the handshake, with the code first in the
            // message; a good token for another cohort connects but cannot join or act.
            for transport in Transport::ALL {
                let auth = token.map(|t| json!({ "token": t }));
                let connected =
                    Client::try_connect(demo.node.http_addr, transport, auth, what).await;
                match (case.status, connected) {
                    (401, Err(ConnectError::Refused(message))) => assert!(
                        message.starts_with(case.code),
                        "{what} over {}: refused with {message:?}",
                        transport.name()
                    ),
                    (403, Ok(mut c)) => {
                        let join = c.call("session:join", vec![json!(s)]).await?;
                        assert_eq!(ack_code(&join), case.code, "{what}: join");
                        let ask = c.call("qa:ask", vec![json!(s), json!("let me in")]).await?;
                        assert_eq!(ack_code(&ask), case.code, "{what}: ask");
                        c.disconnect().await;
                    }
                    (_, Ok(_)) => panic!("{what}: connected over {}", transport.name()),
                    (_, Err(e)) => panic!("{what} over {}: {e}", transport.name()),
                }
            }
        }
        assert_eq!(before, views(&demo).await?, "a refused request changed something");
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_cannot_take_instructor_actions_on_any_transport() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("auth-forbidden").await?;
        let s = demo.session.clone();
        let student = demo.token("student1", "student");
        let before = views(&demo).await?;

        let poll = json!({"question": "Pop quiz?", "kind": "single", "options": ["a", "b"]});
        let rest: [(&str, Value); 3] = [
            ("poll.create", poll.clone()),
            ("broadcast.send", json!({"text": "everyone out"})),
            (
                "qa.answer",
                json!({"question": "demo-q1", "text": "I know this one"}),
            ),
        ];
        for (name, body) in rest {
            let r = demo.command(&student, name, body).await?;
            assert_eq!(
                (r.status, r.error_code().as_deref()),
                (403, Some("forbidden")),
                "{name}: {}",
                r.text()
            );
        }
        // A student may not set their own score.
        let r = demo
            .http
            .post_json(
                "/api/progress",
                Some(&student),
                &json!({"student": "student1", "lesson": "l1", "score": 10, "maxScore": 10}),
            )
            .await?;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (403, Some("forbidden")),
            "score: {}",
            r.text()
        );

        for transport in Transport::ALL {
            let mut c = demo.sio(transport, &student, "student").await?;
            let calls: [(&str, Vec<Value>); 3] = [
                ("poll:create", vec![json!(s), poll.clone()]),
                ("broadcast:send", vec![json!(s), json!("everyone out")]),
                (
                    "qa:answer",
                    vec![json!(s), json!("demo-q1"), json!("I know this one")],
                ),
            ];
            for (event, args) in calls {
                let ack = c.call(event, args).await?;
                assert_eq!(
                    ack_code(&ack),
                    "forbidden",
                    "{event} over {}",
                    transport.name()
                );
            }
            c.disconnect().await;
        }
        assert_eq!(
            before,
            views(&demo).await?,
            "a forbidden action changed something"
        );
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_disconnected_with_a_reason_when_its_token_expires() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("auth-expiry").await?;
        let s = demo.session.clone();
        // Valid now, expiring in four to five seconds (whole seconds): long enough for three
        // sockets, polling among them, to connect and join on a loaded machine first.
        let token = demo.mint(&claims(
            "student1",
            "student",
            &[DEMO_COHORT],
            unix_now_s() + 5,
        ));
        let expiring = Transport::ALL.map(|transport| {
            let (demo, token, s) = (&demo, &token, &s);
            async move {
                let mut c = demo.sio(transport, token, transport.name()).await?;
                let join = c.call("session:join", vec![json!(s)]).await?;
                assert_eq!(join["ok"], true, "{join}");
                let e = c
                    .wait_for("server:error", |e| e.name == "server:error")
                    .await?;
                assert_eq!(e.data()["code"], "token_expired", "{e:?}");
                c.closed(std::time::Duration::from_secs(5)).await?;
                anyhow::Ok(())
            }
        });
        futures_util::future::try_join_all(expiring).await?;
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_issuers_tokens_must_name_the_configured_audience_and_issuer()
-> anyhow::Result<()> {
    within(async {
        let keys = crate::support::TempDir::new("auth-issuer-key");
        let pem = keys.path().join("issuer.pem");
        std::fs::write(&pem, super::auth::ED_PUBLIC)?;
        let demo = Demo::start_with("auth-issuer", |c| {
            c.auth.public_key_pem_file = Some(pem.clone());
            c.auth.public_key_alg = Some("EdDSA".to_owned());
            c.auth.audience = Some("lectern".to_owned());
            c.auth.issuer = Some("https://lms.example".to_owned());
        })
        .await?;
        let key = EncodingKey::from_ed_pem(super::auth::ED_PRIVATE.as_bytes())?;
        let now = unix_now_s();
        let sign = |extra: Value| -> anyhow::Result<String> {
            let mut c = json!({"sub": "student1", "role": "student", "cohorts": [DEMO_COHORT],
                "exp": now + 3600});
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            Ok(jsonwebtoken::encode(
                &Header::new(Algorithm::EdDSA),
                &c,
                &key,
            )?)
        };
        let view = format!("/api/sessions/{}", demo.session);
        let cases = [
            ("neither", json!({}), 401),
            (
                "another audience",
                json!({"aud": "other-app", "iss": "https://lms.example"}),
                401,
            ),
            (
                "another issuer",
                json!({"aud": "lectern", "iss": "https://evil.example"}),
                401,
            ),
            ("no issuer", json!({"aud": ["x", "lectern"]}), 401),
            (
                "both right",
                json!({"aud": "lectern", "iss": "https://lms.example"}),
                200,
            ),
            (
                "audience in a list",
                json!({"aud": ["x", "lectern"], "iss": "https://lms.example"}),
                200,
            ),
        ];
        for (what, extra, status) in cases {
            let token = sign(extra)?;
            let r = demo.http.get(&view, Some(&token)).await?;
            assert_eq!(r.status, status, "{what}: {}", r.text());
            if status == 401 {
                assert_eq!(r.error_code().as_deref(), Some("wrong_issuer"), "{what}");
            }
        }
        // The node's own HS256 tokens are not the external issuer's and need neither claim.
        let own = demo.token("student1", "student");
        assert_eq!(demo.http.get(&view, Some(&own)).await?.status, 200);
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_counts_only_from_an_allowed_origin_and_commands_take_only_json()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("auth-origin", |c| {
            c.allowed_origins = vec!["https://class.example".to_owned()];
        })
        .await?;
        let token = demo.token("student1", "student");
        let cookie = format!("lectern_token={token}");
        let own = format!("http://{}", demo.node.http_addr);
        let prefs = "/api/notifications/preferences";
        let send = |origin: Option<&str>, content_type: &str, body: &str, bearer: bool| {
            let mut headers = vec![("content-type", content_type.to_owned())];
            if bearer {
                headers.push(("authorization", format!("Bearer {token}")));
            } else {
                headers.push(("cookie", cookie.clone()));
            }
            if let Some(o) = origin {
                headers.push(("origin", o.to_owned()));
            }
            let body = body.as_bytes().to_vec();
            let http = &demo.http;
            async move {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                http.send("POST", prefs, &headers, Some(body), super::TEST_TIMEOUT)
                    .await
            }
        };
        let before: Value = demo.http.get(prefs, Some(&token)).await?.json()?;
        let off = r#"{"kinds": {"announcement": "off"}}"#;
        // Another site's page riding on the cookie: refused, JSON or not, and nothing changes.
        for ct in ["application/json", "text/plain"] {
            for origin in ["https://evil.example", "null"] {
                let r = send(Some(origin), ct, off, false).await?;
                assert_eq!(
                    (r.status, r.error_code().as_deref()),
                    (403, Some("bad_origin")),
                    "{origin} {ct}: {}",
                    r.text()
                );
            }
        }
        // The same with SSE: the cookie from another origin opens no stream.
        let sse = demo
            .http
            .sse(
                &format!("/api/stream/sessions/{}", demo.session),
                &[("cookie", &cookie), ("origin", "https://evil.example")],
            )
            .await?;
        let r = sse.err().context("a cross-site SSE stream was opened")?;
        assert_eq!(
            r.error_code().as_deref(),
            Some("bad_origin"),
            "{}",
            r.text()
        );
        assert_eq!(before, demo.http.get(prefs, Some(&token)).await?.json()?);

        // A body that is not declared JSON is refused even from the node's own pages.
        for (ct, what) in [
            ("text/plain", "text/plain"),
            ("application/x-www-form-urlencoded", "form"),
        ] {
            let r = send(Some(&own), ct, off, false).await?;
            assert_eq!(
                (r.status, r.error_code().as_deref()),
                (415, Some("unsupported_media_type")),
                "{what}: {}",
                r.text()
            );
        }
        let r = send(None, "text/plain", off, true).await?;
        assert_eq!(
            r.status, 415,
            "a bearer token does not make text/plain JSON"
        );
        assert_eq!(before, demo.http.get(prefs, Some(&token)).await?.json()?);

        // Allowed: the node's own origin, a configured one, no Origin (curl), and a bearer
        // token from anywhere.
        for (origin, bearer) in [
            (Some(own.as_str()), false),
            (Some("https://class.example"), false),
            (None, false),
            (Some("https://evil.example"), true),
        ] {
            let r = send(origin, "application/json; charset=utf-8", off, bearer).await?;
            assert_eq!(r.status, 200, "{origin:?} bearer={bearer}: {}", r.text());
        }
        let after: Value = demo.http.get(prefs, Some(&token)).await?.json()?;
        assert_eq!(after["kinds"]["announcement"], "off", "{after}");
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateway_records_attendance_and_makes_join_codes() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("auth-attendance").await?;
        let s = demo.session.clone();
        let before = demo.session_view().await?;
        for role in ["student", "instructor"] {
            let token = demo.token(if role == "student" { "student1" } else { "ada" }, role);
            for name in ["attendance.join", "attendance.leave"] {
                let r = demo.command(&token, name, json!({})).await?;
                assert_eq!(
                    (r.status, r.error_code().as_deref()),
                    (403, Some("gateway_only")),
                    "{role} {name}: {}",
                    r.text()
                );
                let r = demo
                    .http
                    .post_json(
                        &format!("/api/sessions/{s}/commands"),
                        Some(&token),
                        &json!({"cmd": name}),
                    )
                    .await?;
                assert_eq!(
                    r.error_code().as_deref(),
                    Some("gateway_only"),
                    "{role} {name}: {}",
                    r.text()
                );
            }
        }
        assert_eq!(
            before["attendance"],
            demo.session_view().await?["attendance"]
        );
        // Join codes likewise: only the node's join-code routes make and redeem them (a raw
        // command could store a key of the sender's choosing, or write who let whom in).
        let cohort = lectern_node::DEMO_COHORT;
        for (role, user, cmd) in [
            ("instructor", "ada", json!({"id": "jc1", "cmd": "join_code.create", "key": "ab".repeat(32),
                "session": s, "role": "student", "expires_at": 4_102_444_800_000_u64, "uses_max": 5})),
            ("admin", "root", json!({"id": "jc2", "cmd": "join_code.redeem", "key": "ab".repeat(32),
                "user": "intruder", "name": "Intruder"})),
        ] {
            let token = demo.token(user, role);
            let r = demo
                .http
                .post_json(&format!("/api/cohorts/{cohort}/commands"), Some(&token), &cmd)
                .await?;
            assert_eq!(
                (r.status, r.error_code().as_deref()),
                (403, Some("gateway_only")),
                "{cmd}: {}",
                r.text()
            );
        }
        demo.stop().await
    })
    .await
}
