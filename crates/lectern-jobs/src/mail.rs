//! Email: building a notification's message (with `List-Unsubscribe` and RFC 8058's
//! `List-Unsubscribe-Post`), and handing it to SMTP (lettre) or, with no SMTP configured (the
//! demo), writing it as an `.eml` file into the outbox folder.
//!
//! The Message-ID is derived from the job id, so a message handed over twice (a crash between
//! the SMTP server's `250` and the job's completion) carries the same id both times and a
//! receiving server or client can drop the copy.

use std::path::PathBuf;
use std::time::Duration;

use lectern_model::{Notification, NotifyKind, UserId};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig};
use lettre::{AsyncTransport, Tokio1Executor};

use crate::unsubscribe;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain text: only for a relay on localhost or a trusted network.
    None,
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// Where SMTP mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Host name (also the name the TLS certificate must carry).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub tls: TlsMode,
    /// User name, when the server wants a login.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// Give up on a connection or a command after this long. Default 10 s.
    pub timeout_ms: u64,
    /// Connections kept open to the server. Default 4.
    pub connections_max: u32,
}

/// What every message says about where it comes from.
#[derive(Debug, Clone)]
pub struct MailIdentity {
    /// The `From` mailbox (`Lectern <no-reply@example.org>`).
    pub from: String,
    /// The node's public base URL, for links in the message.
    pub public_url: String,
    /// The key unsubscribe links are signed with.
    pub unsubscribe_key: Vec<u8>,
}

/// A message ready to hand over.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The job id it belongs to (the outbox file name, the Message-ID's left part).
    pub job_id: String,
    /// The built message.
    pub message: Message,
}

/// Why an email was not handed over.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct MailError {
    /// Retrying cannot help (a 5xx reply, an address the message cannot carry).
    pub permanent: bool,
    /// The mail server could not be reached (connection refused or reset, a timeout, a name
    /// that does not resolve): not a refusal of this message, so the job is parked until the
    /// server answers again instead of spending its attempts.
    pub unreachable: bool,
    /// What happened.
    pub reason: String,
}

impl MailError {
    fn permanent(reason: impl Into<String>) -> MailError {
        MailError {
            permanent: true,
            unreachable: false,
            reason: reason.into(),
        }
    }
}

/// Where messages go.
#[derive(Clone)]
pub enum Mailer {
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in a folder.
    Outbox(PathBuf),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Smtp(_) => f.write_str("Mailer::Smtp"),
            Mailer::Outbox(dir) => write!(f, "Mailer::Outbox({})", dir.display()),
        }
    }
}

impl Mailer {
    /// An SMTP mailer for `config`.
    pub fn smtp(config: &SmtpConfig) -> Result<Mailer, String> {
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned()).map_err(|e| format!("TLS setup for {host}: {e}"))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(Duration::from_millis(config.timeout_ms.max(1))))
            .pool_config(PoolConfig::new().max_size(config.connections_max.max(1)));
        builder = match config.tls {
            TlsMode::None => builder.tls(Tls::None),
            TlsMode::Starttls => builder.tls(Tls::Required(tls(&config.host)?)),
            TlsMode::Tls => builder.tls(Tls::Wrapper(tls(&config.host)?)),
        };
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer::Smtp(builder.build()))
    }

    /// Hands `mail` over: to the SMTP server (returns after its `250`), or into the outbox
    /// (written to a temporary name, then renamed, so a reader never sees half a file).
    pub async fn send(&self, mail: &Outgoing) -> Result<(), MailError> {
        match self {
            Mailer::Smtp(transport) => match transport.send(mail.message.clone()).await {
                Ok(_) => Ok(()),
                Err(e) => Err(MailError {
                    permanent: e.is_permanent(),
                    unreachable: unreachable(&e),
                    reason: format!("SMTP: {e}"),
                }),
            },
            Mailer::Outbox(dir) => {
                let name = file_name(&mail.job_id);
                let path = dir.join(format!("{name}.eml"));
                let tmp = dir.join(format!(".{name}.tmp"));
                let bytes = mail.message.formatted();
                let shown = dir.display().to_string();
                let dir = dir.clone();
                // Durable before the job completes: written, fsynced, then renamed into place.
                let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    use std::io::Write;
                    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
                    // The emails hold live unsubscribe links: readable by the node's user only.
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&dir)?;
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    file.write_all(&bytes)?;
                    file.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    std::fs::File::open(&dir)?.sync_all()
                })
                .await;
                match written {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(MailError {
                        permanent: false,
                        unreachable: false,
                        reason: format!("outbox {shown}: {e}"),
                    }),
                    Err(e) => Err(MailError {
                        permanent: false,
                        unreachable: false,
                        reason: format!("outbox {shown}: the writing task failed: {e}"),
                    }),
                }
            }
        }
    }
}

/// Whether an SMTP failure means the server could not be reached: no SMTP reply at all (not a
/// 4xx or 5xx, not a TLS failure, which is a configuration to fix) and a network error under
/// it (connection refused or reset, a timeout, a name that does not resolve).
fn unreachable(e: &lettre::transport::smtp::Error) -> bool {
    if e.is_transient() || e.is_permanent() || e.is_tls() || e.is_response() {
        return false;
    }
    if e.is_timeout() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A job id as a file name: `/` is the only character a job id has that a name cannot.
fn file_name(job_id: &str) -> String {
    job_id.replace('/', "_")
}

/// The message of one notification to `to`.
pub fn single(
    identity: &MailIdentity,
    job_id: &str,
    notification: &Notification,
    user: &UserId,
    to: &str,
) -> Result<Outgoing, MailError> {
    let base = identity.public_url.trim_end_matches('/');
    let unsubscribe = unsubscribe::link(
        base,
        &identity.unsubscribe_key,
        user,
        Some(notification.kind),
    );
    let body = format!(
        "{}\n\nOpen it in Lectern: {base}{}\n\n--\nYou get this email because of your \
         notification settings for {}. To stop these emails: {unsubscribe}\n",
        notification.body,
        notification.link,
        label(notification.kind),
    );
    build(
        identity,
        job_id,
        to,
        &notification.title,
        body,
        &unsubscribe,
    )
}

/// One digest message for several notifications to `to`.
pub fn digest(
    identity: &MailIdentity,
    job_id: &str,
    notifications: &[&Notification],
    user: &UserId,
    to: &str,
) -> Result<Outgoing, MailError> {
    let base = identity.public_url.trim_end_matches('/');
    let unsubscribe = unsubscribe::link(base, &identity.unsubscribe_key, user, None);
    let mut body = String::new();
    for n in notifications {
        body.push_str(&format!(
            "* {}\n  {}\n  {base}{}\n\n",
            n.title,
            n.body.replace('\n', "\n  "),
            n.link
        ));
    }
    body.push_str(&format!(
        "--\nYour daily Lectern digest. To stop these emails: {unsubscribe}\n"
    ));
    let subject = match notifications.len() {
        1 => "Your Lectern digest: 1 notification".to_owned(),
        n => format!("Your Lectern digest: {n} notifications"),
    };
    build(identity, job_id, to, &subject, body, &unsubscribe)
}

fn label(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Grade => "grades",
        NotifyKind::Announcement => "announcements",
        NotifyKind::Answer => "answers to your questions",
        NotifyKind::PollClosed => "closed polls",
    }
}

fn build(
    identity: &MailIdentity,
    job_id: &str,
    to: &str,
    subject: &str,
    body: String,
    unsubscribe: &str,
) -> Result<Outgoing, MailError> {
    let from: Mailbox = identity
        .from
        .parse()
        .map_err(|e| MailError::permanent(format!("the From address does not parse: {e}")))?;
    let to: Mailbox = to
        .parse()
        .map_err(|e| MailError::permanent(format!("the address {to:?} does not parse: {e}")))?;
    let domain = from.email.domain().to_owned();
    let header = |name: &str, value: String| {
        // Invariant: the two names are fixed ASCII header names.
        let name = HeaderName::new_from_ascii(name.to_owned()).expect("a valid header name");
        HeaderValue::new(name, value)
    };
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .message_id(Some(format!("<{}@{domain}>", file_name(job_id))))
        .raw_header(header("List-Unsubscribe", format!("<{unsubscribe}>")))
        .raw_header(header(
            "List-Unsubscribe-Post",
            "List-Unsubscribe=One-Click".to_owned(),
        ))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| MailError::permanent(format!("the message does not build: {e}")))?;
    Ok(Outgoing {
        job_id: job_id.to_owned(),
        message,
    })
}
