//! Chat and broadcast commands of a session: send and delete a chat message, send a broadcast
//! (an instructor's message to the whole session).
//!
//! A deleted message stays in the document, flagged; views and events leave it out.

use automerge::transaction::Transaction;

use crate::limits::{
    BROADCAST_LEN_MAX_CHARS, BROADCASTS_PER_SESSION_MAX, CHAT_LEN_MAX_CHARS,
    CHAT_MESSAGES_PER_SESSION_MAX, CHAT_MESSAGES_PER_USER_PER_SESSION_MAX,
};
use crate::read::Reader;
use crate::reject::{Rejection, check_text};
use crate::schema::{BROADCASTS, CHAT};
use crate::write::{Ctx, Target, check_count, check_user_count, put, put_map, root};

/// `chat.send`: a new message (any member).
pub(crate) fn send(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    text: &str,
) -> Result<Target, Rejection> {
    let text = check_text("message", text, CHAT_LEN_MAX_CHARS)?;
    let chat = root(tx, CHAT)?;
    check_count(
        ctx.counts,
        "chat.send",
        CHAT_MESSAGES_PER_SESSION_MAX,
        "chat messages",
    )?;
    check_user_count(
        ctx.counts,
        "chat.send",
        ctx.caller,
        CHAT_MESSAGES_PER_USER_PER_SESSION_MAX,
        "chat messages",
    )?;
    let m = put_map(tx, &chat, ctx.id.as_str())?;
    put(tx, &m, "text", text)?;
    put(tx, &m, "author", ctx.user())?;
    put(tx, &m, "author_name", ctx.caller.display_name())?;
    put(tx, &m, "at", ctx.now.as_i64())?;
    put(tx, &m, "deleted", false)?;
    Ok(Target::item(ctx.id.as_str()))
}

/// `chat.delete` (staff): flags the message deleted.
pub(crate) fn delete(tx: &mut Transaction<'_>, message: &str) -> Result<Target, Rejection> {
    let chat = root(tx, CHAT)?;
    let m = Reader::now(&*tx)
        .map(&chat, message)
        .ok_or_else(|| Rejection::not_found("chat message", message))?;
    put(tx, &m, "deleted", true)?;
    Ok(Target::item(message))
}

/// `broadcast.send` (instructor): a message to the whole session.
pub(crate) fn broadcast(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    text: &str,
) -> Result<Target, Rejection> {
    let text = check_text("broadcast", text, BROADCAST_LEN_MAX_CHARS)?;
    let b = root(tx, BROADCASTS)?;
    check_count(
        ctx.counts,
        "broadcast.send",
        BROADCASTS_PER_SESSION_MAX,
        "broadcasts",
    )?;
    let m = put_map(tx, &b, ctx.id.as_str())?;
    put(tx, &m, "text", text)?;
    put(tx, &m, "by", ctx.user())?;
    put(tx, &m, "by_name", ctx.caller.display_name())?;
    put(tx, &m, "at", ctx.now.as_i64())?;
    Ok(Target::item(ctx.id.as_str()))
}
