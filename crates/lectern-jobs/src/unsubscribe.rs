//! Signed unsubscribe links: `{base}/api/notifications/unsubscribe?u={user}&k={kind|all}&s={sig}`,
//! where `sig` is HMAC-SHA256 over the user and the kind under the node's unsubscribe key.
//!
//! A link lets whoever holds it turn one kind of email off for one user (RFC 8058's one-click
//! POST, or a GET that shows a button), and nothing else: it is no access token. Ids are
//! `[A-Za-z0-9_-]`, so the query needs no escaping.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use lectern_model::{NotifyKind, UserId};
use sha2::Sha256;

/// The `k` value that stands for every kind (digest emails).
pub const ALL_KINDS: &str = "all";

/// The unsubscribe link for `user` and `kind` (`None`: every kind).
pub fn link(base: &str, key: &[u8], user: &UserId, kind: Option<NotifyKind>) -> String {
    let kind = kind.map_or(ALL_KINDS, NotifyKind::as_str);
    let sig = sign(key, user.as_str(), kind);
    format!("{base}/api/notifications/unsubscribe?u={user}&k={kind}&s={sig}")
}

/// The signature of (`user`, `kind`), base64url.
pub fn sign(key: &[u8], user: &str, kind: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(key, user, kind).finalize().into_bytes())
}

/// Whether `sig` is the signature of (`user`, `kind`); compared in constant time.
pub fn verify(key: &[u8], user: &str, kind: &str, sig: &str) -> bool {
    if key.is_empty() {
        return false;
    }
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    mac(key, user, kind).verify_slice(&sig).is_ok()
}

fn mac(key: &[u8], user: &str, kind: &str) -> Hmac<Sha256> {
    // Invariant: HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    // Domain-separated, and the user id cannot contain '\n', so (user, kind) pairs never collide.
    mac.update(b"lectern-unsubscribe\n");
    mac.update(user.as_bytes());
    mac.update(b"\n");
    mac.update(kind.as_bytes());
    mac
}
