//! Running a command for a caller, whatever transport brought it: the caller's command-rate
//! token, the cohort check of a session link, the hub's `execute`, the latency metric and the
//! ack JSON (`{ok, id, token}`). Socket.IO events arrive parsed ([`Gateway::run_parsed`]):
//! a vote is read in its poll's terms here, after its rate token is taken.

use std::time::Instant;

use axum::http::StatusCode;
use lectern_hub::Acked;
use lectern_model::{Caller, Command, CommandBody, CommandId, DocId};
use serde_json::{Value, json};

use crate::Gateway;
use crate::commands::{self, Body, Parsed};
use crate::error::AppError;

impl Gateway {
    /// Runs a command for `caller` on `doc` under the rate limit; the ack JSON.
    pub(crate) async fn run(
        &self,
        caller: &Caller,
        doc: DocId,
        id: Option<CommandId>,
        body: CommandBody,
    ) -> Result<Value, AppError> {
        self.take_command_token(caller.user.as_str())?;
        self.run_charged(caller, doc, id, body).await
    }

    /// [`Gateway::run`] for a command whose rate token was already taken.
    pub(crate) async fn run_charged(
        &self,
        caller: &Caller,
        doc: DocId,
        id: Option<CommandId>,
        body: CommandBody,
    ) -> Result<Value, AppError> {
        // A cohort may link only its own sessions; the cohort document cannot see the session's.
        if let (DocId::Cohort(cohort), CommandBody::SessionLink { session, .. }) = (&doc, &body) {
            let owner = self
                .hub()
                .read(DocId::Session(session.clone()), |r| r.session_cohort())
                .await?;
            lectern_model::check_session_link(cohort, owner.as_ref())?;
        }
        let id = id.unwrap_or_else(new_command_id);
        let started = Instant::now();
        let result = self
            .hub()
            .execute(
                doc,
                caller.clone(),
                Command {
                    id: id.clone(),
                    body,
                },
            )
            .await;
        self.metrics().command_latency(started.elapsed());
        let Acked { token, .. } = result?;
        self.metrics().event_in();
        Ok(json!({"ok": true, "id": id.as_str(), "token": token.to_string()}))
    }

    /// Runs a parsed Socket.IO event.
    pub(crate) async fn run_parsed(
        &self,
        caller: &Caller,
        parsed: Parsed,
    ) -> Result<Value, AppError> {
        let doc = DocId::Session(parsed.session);
        let body = match parsed.body {
            Body::Ready(b) => b,
            Body::Vote(poll, raw) => {
                // The vote's rate token is taken before the poll is read, and the poll is
                // shown only to a member of the session's cohort: a flood of votes on random
                // sessions spends the sender's tokens, and another cohort's session answers
                // as one that does not exist (no existence oracle).
                self.take_command_token(caller.user.as_str())?;
                let p = poll.clone();
                let (cohort, kind) = self
                    .hub()
                    .read(doc.clone(), move |r| (r.session_cohort(), r.poll_kind(&p)))
                    .await?;
                if !cohort.is_some_and(|c| caller.is_member(&c)) {
                    return Err(AppError::new(
                        StatusCode::NOT_FOUND,
                        "doc_not_found",
                        format!("no session {doc}"),
                    ));
                }
                let kind = kind.ok_or_else(|| {
                    AppError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no poll {poll}"),
                    )
                })?;
                let body = CommandBody::PollVote {
                    poll,
                    choice: commands::choice(kind, &raw)?,
                };
                return self.run_charged(caller, doc, parsed.id, body).await;
            }
        };
        self.run(caller, doc, parsed.id, body).await
    }
}

/// A fresh command id for commands whose client gave none.
pub(crate) fn new_command_id() -> CommandId {
    let n: u128 = rand::random();
    // Invariant: 32 hex digits after a letter are a valid id.
    format!("g{n:032x}")
        .parse()
        .expect("generated ids are valid")
}
