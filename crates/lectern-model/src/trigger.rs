//! Triggers: which applied commands notify whom.
//!
//! A trigger is a pure function of a command that was just applied and the document after it
//! ([`crate::Replica::trigger_for`]): a quiz scored tells the student, an announcement tells
//! every cohort member, an answer tells the asker, a closed poll tells its voters. The hub asks
//! for triggers only for commands it accepted itself (never for changes a peer sent), and the
//! node's job runner turns each into durable jobs, so an event notifies once however many nodes
//! hold the document.

use automerge::Automerge;
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::command::{Command, CommandBody};
use crate::ids::{CommandId, DocId, Millis, UserId};
use crate::notification::{Notification, NotifyKind};
use crate::read::Reader;
use crate::view::{self, Poll, Question};

/// A notification and who gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The notification.
    pub notification: Notification,
    /// Its recipients, without duplicates.
    pub recipients: Vec<UserId>,
}

/// The id of the notification `command` of `doc` triggers: `n` and 24 hex digits of the
/// SHA-256 of the document's id and the command's id. It depends on nothing else, so a command
/// applied on two nodes before they met (a client's retry on another node after the first one
/// died with its ack) notifies under one id on both: the inbox holds it once (the two pushes
/// write one key), and its emails share one Message-ID.
pub(crate) fn notification_id(doc: &DocId, command: &CommandId) -> CommandId {
    let mut hash = Sha256::new();
    hash.update(doc.to_string().as_bytes());
    // A separator no id contains, so that ("a", "bc") and ("ab", "c") differ.
    hash.update([0]);
    hash.update(command.as_str().as_bytes());
    let hex: String = hash.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Invariant: "n" and 24 hex digits are a valid id.
    CommandId::new(format!("n{hex}")).expect("a hex notification id is valid")
}

/// The trigger of `cmd`, just applied by `caller` to `doc`.
pub(crate) fn trigger(
    doc: &Automerge,
    id: &DocId,
    caller: &Caller,
    cmd: &Command,
    at: Millis,
) -> Option<Trigger> {
    let nid = notification_id(id, &cmd.id);
    let r = Reader::now(doc);
    let me = caller.user.as_str();
    let (kind, title, body, link, cohort, recipients): (_, String, String, String, _, Vec<String>) =
        match (&cmd.body, id) {
            (
                CommandBody::ProgressUpdate {
                    student,
                    lesson,
                    score: Some(score),
                    max_score: Some(max),
                    ..
                },
                DocId::Cohort(c),
            ) => (
                NotifyKind::Grade,
                format!("Your grade for {lesson} is ready"),
                format!("You scored {score} out of {max} on {lesson}."),
                format!("/?cohort={c}&lesson={lesson}"),
                Some(c.clone()),
                vec![student.to_string()],
            ),
            (CommandBody::AnnouncementPost { title, body }, DocId::Cohort(c)) => (
                NotifyKind::Announcement,
                title.trim().to_owned(),
                body.trim().to_owned(),
                format!("/?cohort={c}"),
                Some(c.clone()),
                view::roster(&r)
                    .into_iter()
                    .map(|e| e.user)
                    .filter(|u| u != me)
                    .collect(),
            ),
            (CommandBody::QaAnswer { question, .. }, DocId::Session(s)) => {
                let q = Question::read(&r, question.as_str())?;
                let cohort = view::session_meta(&r).map(|(c, _)| c);
                (
                    NotifyKind::Answer,
                    "Your question was answered".to_owned(),
                    format!("“{}”\n\n{}", q.text(), q.answer_text().unwrap_or_default()),
                    format!("/?session={s}&question={question}"),
                    cohort,
                    vec![q.author.clone()]
                        .into_iter()
                        .filter(|u| u != me)
                        .collect(),
                )
            }
            (CommandBody::PollClose { poll }, DocId::Session(s)) => {
                let p = Poll::read(&r, poll.as_str())?;
                let cohort = view::session_meta(&r).map(|(c, _)| c);
                (
                    NotifyKind::PollClosed,
                    format!("Poll closed: {}", p.question),
                    "A poll you voted in has closed; its results are in the session.".to_owned(),
                    format!("/?session={s}&poll={poll}"),
                    cohort,
                    p.votes.iter().map(|(u, _)| u.clone()).collect(),
                )
            }
            _ => return None,
        };
    let mut recipients: Vec<UserId> = recipients
        .into_iter()
        .filter_map(|u| UserId::new(u).ok())
        .collect();
    recipients.sort();
    recipients.dedup();
    if recipients.is_empty() {
        return None;
    }
    Some(Trigger {
        notification: Notification {
            id: nid,
            kind,
            title,
            body,
            link,
            cohort,
            at,
        },
        recipients,
    })
}
