//! The session view holds the newest items of its long lists only (200 chat messages, 500
//! questions, 100 broadcasts) and says how many older ones it left out; the rest come a page at
//! a time from `GET /api/sessions/{id}/older/{questions|chat|broadcasts}?before=AT:ID&limit=N`,
//! so a join costs the same in a session of any age, and no item is lost or repeated across
//! the pages.

use lectern_model::limits::CHAT_IN_VIEW_MAX;
use lectern_model::{Caller, CommandBody, DocId, Role};
use serde_json::Value;

use super::{Demo, within};
use crate::support::cmd;

/// Kills: a view that holds every message (no `older`), a page that overlaps the view or
/// skips an item at a page boundary, a `more` that lies, pages open to non-members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_holds_the_newest_items_and_the_rest_come_a_page_at_a_time() -> anyhow::Result<()>
{
    within(async {
        let demo = Demo::start("paging").await?;
        let student = Caller {
            user: "student1".parse()?,
            name: "Student 1".into(),
            role: Role::Student,
            cohorts: vec![lectern_node::DEMO_COHORT.parse()?],
        };
        let doc = DocId::Session(demo.session.parse()?);
        let extra = 7;
        for i in 0..CHAT_IN_VIEW_MAX + extra {
            let body = CommandBody::ChatSend {
                text: format!("message {i}"),
            };
            demo.node
                .hub
                .execute(
                    doc.clone(),
                    student.clone(),
                    cmd(&format!("chat-{i}"), body),
                )
                .await?;
        }
        let token = demo.token("student1", "student");
        let base = format!("/api/sessions/{}", demo.session);
        let view = demo.http.get(&base, Some(&token)).await?.json()?;
        let chat = view["chat"].as_array().cloned().unwrap_or_default();
        assert_eq!(chat.len(), CHAT_IN_VIEW_MAX);
        assert_eq!(view["older"]["chat"], extra, "{}", view["older"]);
        let text = |m: &Value| m["text"].as_str().unwrap_or_default().to_owned();
        assert_eq!(text(&chat[0]), format!("message {extra}"));

        // Page back from the oldest message held, three at a time.
        let cursor = |m: &Value| format!("{}:{}", m["at"], m["id"].as_str().unwrap_or_default());
        let mut before = cursor(&chat[0]);
        let mut older: Vec<String> = Vec::new();
        let mut pages = 0;
        loop {
            let page = demo
                .http
                .get(
                    &format!("{base}/older/chat?before={before}&limit=3"),
                    Some(&token),
                )
                .await?;
            anyhow::ensure!(page.status == 200, "page: {}", page.status);
            let page = page.json()?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            assert!(items.len() <= 3);
            pages += 1;
            let mut texts: Vec<String> = items.iter().map(text).collect();
            texts.extend(older);
            older = texts;
            if page["more"] == false {
                break;
            }
            before = cursor(&items[0]);
            anyhow::ensure!(pages < 10, "paging never ends");
        }
        let expected: Vec<String> = (0..extra).map(|i| format!("message {i}")).collect();
        assert_eq!(older, expected, "every older message once, in order");
        assert_eq!(pages, 3);

        // Without a cursor: the newest page.
        let newest = demo
            .http
            .get(&format!("{base}/older/chat?limit=2"), Some(&token))
            .await?
            .json()?;
        let newest: Vec<String> = newest["items"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        let last = CHAT_IN_VIEW_MAX + extra;
        assert_eq!(
            newest,
            [
                format!("message {}", last - 2),
                format!("message {}", last - 1)
            ]
        );

        // Errors: an unknown list, a malformed cursor, a stranger.
        let r = demo
            .http
            .get(&format!("{base}/older/votes"), Some(&token))
            .await?;
        assert_eq!(r.status, 404);
        let r = demo
            .http
            .get(&format!("{base}/older/chat?before=yesterday"), Some(&token))
            .await?;
        assert_eq!(r.status, 400);
        let stranger = demo.mint(&super::claims(
            "intruder",
            "student",
            &["another-cohort"],
            super::unix_now_s() + 3600,
        ));
        let r = demo
            .http
            .get(&format!("{base}/older/chat"), Some(&stranger))
            .await?;
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        demo.stop().await
    })
    .await
}
