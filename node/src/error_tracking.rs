//! Error tracking: panics and error-level events sent to a Sentry DSN (`error_tracking.dsn`),
//! off unless it is set.
//!
//! The `lectern-node` binary calls [`init`] once at start (the client is process-wide, like the
//! panic hook it installs) and adds [`layer`] to its log subscriber: an `error!` event becomes
//! a Sentry event, every other level is left out (no breadcrumbs: an info line of a busy node
//! says who joined what, which has no business leaving it). A panic in any task is reported by
//! the panic integration; tokio keeps the node running.
//!
//! What leaves the node is scrubbed before it is sent ([`scrub`]): no request data, no user, no
//! breadcrumbs, and any JWT-shaped text (`eyJ…`) and the node's own secrets (the admin token,
//! the token key) replaced. Tokens and email bodies are never logged in the first place
//! (`tests/node.rs` checks the log lines); this is the second line. `POST
//! /admin/error-tracking/test[?kind=panic]` (admin token) makes a test event, to check the
//! wiring after a deploy.

use std::borrow::Cow;
use std::sync::Arc;

use sentry::protocol::Event;

/// The text a scrubbed token or secret becomes.
const REDACTED: &str = "[redacted]";

/// The shortest secret worth replacing, in bytes: shorter strings would replace ordinary
/// words (configured secrets are at least 16 bytes anyway).
const SECRET_LEN_MIN_BYTES: usize = 16;

/// Starts error tracking when `dsn` is set: the returned guard flushes pending events when
/// dropped (keep it for the process's life). `secrets` are replaced wherever they would appear.
pub fn init(
    dsn: Option<&str>,
    secrets: Vec<String>,
) -> anyhow::Result<Option<sentry::ClientInitGuard>> {
    let Some(dsn) = dsn else {
        return Ok(None);
    };
    let dsn: sentry::types::Dsn = dsn
        .parse()
        .map_err(|e| anyhow::anyhow!("error_tracking.dsn: {e}"))?;
    // The HTTP transport's rustls takes the process's default provider: ring, the one crypto
    // provider in the build (an error means one is installed already, which is as good).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secrets: Arc<Vec<String>> = Arc::new(
        secrets
            .into_iter()
            .filter(|s| s.len() >= SECRET_LEN_MIN_BYTES)
            .collect(),
    );
    let mut options = sentry::ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(Cow::Borrowed(concat!(
        "lectern@",
        env!("CARGO_PKG_VERSION")
    )));
    options.send_default_pii = false;
    options.max_breadcrumbs = 0;
    options.attach_stacktrace = false;
    options.before_send = Some(Arc::new(move |event| Some(scrub(event, &secrets))));
    Ok(Some(sentry::init(options)))
}

/// The log layer that turns error-level events into Sentry events (nothing else).
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    sentry::integrations::tracing::ErrorLayer::new()
        .with_filter(tracing_subscriber::filter::LevelFilter::ERROR)
}

/// `event` without what must not leave the node: request data, the user, breadcrumbs, and
/// JWT-shaped text or `secrets` anywhere in its message, exceptions or extra fields.
pub fn scrub(mut event: Event<'static>, secrets: &[String]) -> Event<'static> {
    event.request = None;
    event.user = None;
    event.breadcrumbs = Default::default();
    let clean = |s: &str| redact(s, secrets);
    if let Some(m) = &event.message {
        event.message = Some(clean(m));
    }
    if let Some(l) = &mut event.logentry {
        l.message = clean(&l.message);
        l.params.clear();
    }
    for e in &mut event.exception.values {
        if let Some(v) = &e.value {
            e.value = Some(clean(v));
        }
    }
    for v in event.extra.values_mut() {
        if let Some(s) = v.as_str() {
            *v = clean(s).into();
        }
    }
    for v in event.tags.values_mut() {
        *v = clean(v);
    }
    event
        .contexts
        .retain(|_, c| !matches!(c, sentry::protocol::Context::Other(_)));
    event
}

/// `text` with every JWT-shaped run (`eyJ` followed by base64url and dots) and every secret
/// replaced by [`REDACTED`].
fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("eyJ") {
        result.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        result.push_str(REDACTED);
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}
