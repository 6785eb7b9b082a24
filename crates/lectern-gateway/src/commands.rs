//! Socket.IO events to model commands.
//!
//! The client contract (ARCHITECTURE.md, "Client contract") follows the seed's positional style:
//! `socket.emit('qa:ask', sessionId, 'How do I…?', {anonymous, id}, ack)`. Every event takes the
//! session id first; a trailing object may carry options, including `id`, the client's command
//! id (a retry with the same id is applied once). Arguments of the wrong type or number are a
//! `bad_request`, never a panic.

use lectern_model::{
    CommandBody, CommandId, PollChoice, PollKind, PollSpec, QuestionId, SessionId,
};
use serde_json::Value;

use crate::error::AppError;

/// A parsed client event.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The session it targets.
    pub(crate) session: SessionId,
    /// The client's command id, if it gave one.
    pub(crate) id: Option<CommandId>,
    /// The command, except for votes, whose shape depends on the poll (see [`Vote`]).
    pub(crate) body: Body,
}

/// A command, or a vote still to be read in its poll's terms.
#[derive(Debug)]
pub(crate) enum Body {
    /// Ready to apply.
    Ready(CommandBody),
    /// `poll:vote`: the raw choice and the poll.
    Vote(lectern_model::PollId, Value),
}

/// The events that are commands.
pub(crate) const COMMAND_EVENTS: &[&str] = &[
    "qa:ask",
    "qa:upvote",
    "qa:unvote",
    "qa:answer",
    "qa:pin",
    "qa:dismiss",
    "qa:approve",
    "qa:reject",
    "poll:create",
    "poll:vote",
    "poll:close",
    "poll:reveal",
    "chat:send",
    "chat:delete",
    "broadcast:send",
];

struct Args {
    event: String,
    args: Vec<Value>,
    opts: serde_json::Map<String, Value>,
}

impl Args {
    fn new(event: &str, mut args: Vec<Value>, positional: usize) -> Result<Args, AppError> {
        let mut opts = serde_json::Map::new();
        if args.len() > positional {
            match args.pop() {
                Some(Value::Object(o)) if args.len() == positional => opts = o,
                Some(Value::Null) if args.len() == positional => {}
                _ => {
                    return Err(AppError::bad_request(format!(
                        "{event} takes {positional} argument(s) and an optional options object"
                    )));
                }
            }
        }
        if args.len() < positional {
            return Err(AppError::bad_request(format!(
                "{event} takes {positional} argument(s), got {}",
                args.len()
            )));
        }
        Ok(Args {
            event: event.to_owned(),
            args,
            opts,
        })
    }

    fn str(&self, i: usize, what: &str) -> Result<&str, AppError> {
        self.args[i].as_str().ok_or_else(|| {
            AppError::bad_request(format!(
                "{}: argument {} ({what}) must be a string",
                self.event,
                i + 1
            ))
        })
    }

    fn id<T: std::str::FromStr<Err = lectern_model::IdError>>(
        &self,
        i: usize,
        what: &str,
    ) -> Result<T, AppError> {
        self.str(i, what)?
            .parse()
            .map_err(|e| AppError::bad_request(format!("{}: {what}: {e}", self.event)))
    }

    fn opt_bool(&self, key: &str) -> Result<bool, AppError> {
        match self.opts.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(AppError::bad_request(format!(
                "{}: option {key} must be true or false",
                self.event
            ))),
        }
    }

    fn command_id(&self) -> Result<Option<CommandId>, AppError> {
        match self.opts.get("id") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|e| AppError::bad_request(format!("{}: option id: {e}", self.event))),
            Some(_) => Err(AppError::bad_request(format!(
                "{}: option id must be a string",
                self.event
            ))),
        }
    }
}

/// Parses a command event's arguments (everything but the ack callback).
pub(crate) fn parse(event: &str, args: Vec<Value>) -> Result<Parsed, AppError> {
    let positional = match event {
        "qa:ask" | "qa:upvote" | "qa:unvote" | "qa:dismiss" | "qa:approve" | "qa:reject"
        | "poll:create" | "poll:close" | "poll:reveal" | "chat:send" | "chat:delete"
        | "broadcast:send" | "qa:pin" => 2,
        "qa:answer" | "poll:vote" => 3,
        other => {
            return Err(AppError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown_event",
                format!("no event {other}"),
            ));
        }
    };
    let a = Args::new(event, args, positional)?;
    let session: SessionId = a.id(0, "session id")?;
    let question = |a: &Args| a.id::<QuestionId>(1, "question id");
    let body = match event {
        "qa:ask" => CommandBody::QaAsk {
            text: a.str(1, "question")?.to_owned(),
            anonymous: a.opt_bool("anonymous")?,
        },
        "qa:upvote" => CommandBody::QaUpvote {
            question: question(&a)?,
        },
        "qa:unvote" => CommandBody::QaUnvote {
            question: question(&a)?,
        },
        "qa:answer" => CommandBody::QaAnswer {
            question: question(&a)?,
            text: a.str(2, "answer")?.to_owned(),
        },
        "qa:pin" => CommandBody::QaPin {
            question: question(&a)?,
            pinned: !a.opt_bool("unpin")?,
        },
        "qa:dismiss" => CommandBody::QaDismiss {
            question: question(&a)?,
        },
        "qa:approve" => CommandBody::QaApprove {
            question: question(&a)?,
        },
        "qa:reject" => CommandBody::QaReject {
            question: question(&a)?,
        },
        "poll:create" => CommandBody::PollCreate(poll_spec(&a.args[1])?),
        "poll:vote" => {
            let poll = a.id(1, "poll id")?;
            return Ok(Parsed {
                session,
                id: a.command_id()?,
                body: Body::Vote(poll, a.args[2].clone()),
            });
        }
        "poll:close" => CommandBody::PollClose {
            poll: a.id(1, "poll id")?,
        },
        "poll:reveal" => CommandBody::PollReveal {
            poll: a.id(1, "poll id")?,
        },
        "chat:send" => CommandBody::ChatSend {
            text: a.str(1, "message")?.to_owned(),
        },
        "chat:delete" => CommandBody::ChatDelete {
            message: a.id(1, "message id")?,
        },
        "broadcast:send" => CommandBody::BroadcastSend {
            text: a.str(1, "broadcast")?.to_owned(),
        },
        _ => unreachable!("every event with a positional count is handled"),
    };
    Ok(Parsed {
        session,
        id: a.command_id()?,
        body: Body::Ready(body),
    })
}

/// A poll as clients write it: `{question, kind, options, scaleMax, hideResults}`.
fn poll_spec(v: &Value) -> Result<PollSpec, AppError> {
    let bad = |m: &str| AppError::bad_request(format!("poll:create: {m}"));
    let o = v
        .as_object()
        .ok_or_else(|| bad("the poll must be an object"))?;
    let question = o
        .get("question")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("question must be a string"))?;
    let kind = match o.get("kind").and_then(Value::as_str).unwrap_or("single") {
        "single" => PollKind::Single,
        "multiple" => PollKind::Multiple,
        "rating" => PollKind::Rating,
        "open_text" | "open" | "text" => PollKind::OpenText,
        other => return Err(bad(&format!("unknown kind {other}"))),
    };
    let options = match o.get("options") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("options must be strings"))?,
        Some(_) => return Err(bad("options must be a list of strings")),
    };
    let scale_max = match o.get("scaleMax").or_else(|| o.get("scale_max")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("scaleMax must be a small positive number"))?,
        ),
    };
    let hide_results = match o.get("hideResults").or_else(|| o.get("hide_results")) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("hideResults must be true or false")),
    };
    Ok(PollSpec {
        question: question.to_owned(),
        kind,
        options,
        scale_max,
        hide_results,
    })
}

/// Reads a bare vote in the terms of a poll of `kind`: an index, a list of indexes, a rating
/// or a text; the model's tagged form (`{"single": 2}`) is accepted too.
pub(crate) fn choice(kind: PollKind, v: &Value) -> Result<PollChoice, AppError> {
    if v.is_object() {
        return serde_json::from_value(v.clone())
            .map_err(|e| AppError::bad_request(format!("poll:vote: {e}")));
    }
    let index = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let bad = || {
        AppError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_vote",
            format!("this vote does not fit a {kind:?} poll"),
        )
    };
    match kind {
        PollKind::Single => index(v).map(PollChoice::Single).ok_or_else(bad),
        PollKind::Rating => index(v).map(PollChoice::Rating).ok_or_else(bad),
        PollKind::Multiple => v
            .as_array()
            .and_then(|a| a.iter().map(index).collect::<Option<Vec<_>>>())
            .map(PollChoice::Multiple)
            .ok_or_else(bad),
        PollKind::OpenText => v
            .as_str()
            .map(|s| PollChoice::Text(s.to_owned()))
            .ok_or_else(bad),
    }
}
