//! Bearer tokens: verifying a JWT into a [`Caller`], minting one, and finding one in a request.
//!
//! Every transport (Socket.IO, SSE, REST, long-poll) authenticates the same way: the token
//! comes from [`token_from_parts`], [`Verifier::verify`] checks it and returns the `Caller`
//! that `lectern-model` authorizes (`lectern_model::auth`). Tokens are HS256 with the node's shared
//! secret by default; an external issuer (an LMS) can be trusted with one EdDSA or RS256
//! public key. Verification takes `now_s` instead of reading the clock, so tests and the
//! caller decide what time it is; jsonwebtoken's own clock-based `exp` check is switched off.

use std::collections::HashSet;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lectern_model::{Caller, CohortId, Role, UserId};
use serde::{Deserialize, Serialize};

/// The longest token [`Verifier::verify`] looks at; a longer one is refused unparsed.
pub const TOKEN_LEN_MAX_BYTES: usize = 8 * 1024;

/// Default clock-skew allowance on `exp`, in seconds.
pub const LEEWAY_DEFAULT_S: u64 = 30;

/// The longest a token may live by default, in seconds (one year and a day): a token whose
/// `exp` is further from now is refused, so a leaked key cannot mint tokens that outlive its
/// rotation by decades, and `exp` near `u64::MAX` never reaches the clock arithmetic of the
/// transports. [`AuthConfig::token_lifetime_max_s`] sets another.
pub const TOKEN_LIFETIME_MAX_S: u64 = 366 * 86_400;

/// The default of [`AuthConfig::token_lifetime_max_s`], in seconds.
pub const TOKEN_LIFETIME_MAX_DEFAULT_S: u64 = TOKEN_LIFETIME_MAX_S;

/// The cookie that carries a token when no `Authorization` header is sent.
pub const TOKEN_COOKIE: &str = "lectern_token";

/// Claims in a Lectern token.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Claims {
    /// The user id; must be a valid [`UserId`].
    pub sub: String,
    /// Display name shown with what the user writes.
    #[serde(default)]
    pub name: String,
    /// `student`, `ta`, `instructor` or `admin`.
    pub role: String,
    /// Cohorts the token grants; each must be a valid [`CohortId`].
    #[serde(default)]
    pub cohorts: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch; one after now (beyond the leeway) is refused.
    #[serde(default)]
    pub iat: u64,
    /// Not before, seconds since the Unix epoch; absent means valid from issue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// What the verifier trusts.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The HS256 shared secret; empty means HS256 tokens are refused.
    pub hs256_secret: Vec<u8>,
    /// An external issuer's public key, if one is trusted.
    pub public_key: Option<PublicKey>,
    /// Clock-skew allowance on `exp`, `nbf` and `iat`, in seconds (default
    /// [`LEEWAY_DEFAULT_S`]).
    pub leeway_s: u64,
    /// Longest accepted time from now to a token's `exp`, in seconds (default
    /// [`TOKEN_LIFETIME_MAX_DEFAULT_S`]).
    pub token_lifetime_max_s: u64,
    /// The `aud` an external issuer's tokens must carry (one of theirs, when a list); `None`
    /// means not checked. Applies to tokens verified with [`AuthConfig::public_key`].
    pub audience: Option<String>,
    /// The `iss` an external issuer's tokens must carry; `None` means not checked. Applies to
    /// tokens verified with [`AuthConfig::public_key`].
    pub issuer: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: Vec::new(),
            public_key: None,
            leeway_s: LEEWAY_DEFAULT_S,
            token_lifetime_max_s: TOKEN_LIFETIME_MAX_DEFAULT_S,
            audience: None,
            issuer: None,
        }
    }
}

/// The algorithm of a trusted public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKeyAlg {
    /// Ed25519 (`EdDSA`).
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`RS256`).
    Rs256,
}

/// An external issuer's public key.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// Which algorithm tokens signed with this key use.
    pub alg: PublicKeyAlg,
    /// The key in PEM (`-----BEGIN PUBLIC KEY-----`).
    pub pem: String,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Who is calling.
    pub caller: Caller,
    /// When the token expires (its `exp`), seconds since the Unix epoch; a long-lived
    /// connection is cut off after this.
    pub expires_at_s: u64,
}

/// A verified token presented for an extension ([`Verifier::verify_for_refresh`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// Who is calling.
    pub caller: Caller,
    /// Its `exp`, seconds since the Unix epoch.
    pub exp: u64,
    /// Its `iat` (0 when absent), seconds since the Unix epoch.
    pub iat: u64,
    /// Its [`ORIG_EXP_CLAIM`]: the expiry its issuer gave the first token of the chain, when
    /// this one is itself an extension (the cluster's own HS256 tokens only; `None` for an
    /// outside issuer's).
    pub orig_exp: Option<u64>,
}

/// Why a token was refused (or a key could not be loaded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no token.
    #[error(
        "no token: send `Authorization: Bearer <token>`, cookie `lectern_token` or `?access_token=`"
    )]
    Missing,
    /// The token is not a well-formed JWT, or uses an algorithm that is not accepted.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the configured key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The token's `exp` is past (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// The token's `nbf` or `iat` lies in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The token's `exp` lies further ahead than the configured maximum lifetime.
    #[error("the token lives longer than this node allows (auth.token_lifetime_max_s)")]
    TooLong,
    /// The only token is the cookie, sent by a page of an origin that is not allowed.
    #[error("the `lectern_token` cookie is not accepted from this Origin; send a bearer token")]
    ForeignOrigin,
    /// An external issuer's token lacks the configured `aud` or `iss`.
    #[error("the token is for another audience or from another issuer: {0}")]
    WrongIssuer(String),
    /// The signature is good but a claim is missing or invalid.
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
    /// A configured key is unusable (bad PEM, empty secret). Raised by [`Verifier::new`]
    /// and [`mint`], never by [`Verifier::verify`].
    #[error("auth configuration: {0}")]
    Config(String),
}

impl AuthError {
    /// A stable code for clients (`{error: {code, message}}`).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) => "bad_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::TooLong => "token_too_long",
            AuthError::WrongIssuer(_) => "wrong_issuer",
            AuthError::ForeignOrigin => "bad_origin",
            AuthError::InvalidClaims(_) => "bad_claims",
            AuthError::Config(_) => "auth_config",
        }
    }
}

/// Verifies tokens against the configured keys. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Keys>,
}

impl Verifier {
    /// Loads the keys of `config`; a bad PEM, or no key at all, is an error here (at
    /// startup) rather than on every request.
    pub fn new(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let hs256 = if config.hs256_secret.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_secret(&config.hs256_secret)
                    .map_err(|e| AuthError::Config(format!("HS256 secret: {e}")))?,
            )
        };
        let public = match &config.public_key {
            None => None,
            Some(key) => {
                let pem = key.pem.as_bytes();
                let (alg, parsed) = match key.alg {
                    PublicKeyAlg::EdDsa => (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem)),
                    PublicKeyAlg::Rs256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)),
                };
                let parsed = parsed.map_err(|e| {
                    AuthError::Config(format!("{alg:?} public key is not a valid PEM: {e}"))
                })?;
                Some((alg, parsed))
            }
        };
        if hs256.is_none() && public.is_none() {
            return Err(AuthError::Config(
                "no key configured: set an HS256 secret or a public key".to_owned(),
            ));
        }
        Ok(Verifier {
            inner: Arc::new(Keys {
                hs256,
                public,
                leeway_s: config.leeway_s,
                lifetime_max_s: config.token_lifetime_max_s,
                audience: config.audience.clone(),
                issuer: config.issuer.clone(),
            }),
        })
    }

    /// Verifies signature (HS256 with the secret, or the configured public-key algorithm when
    /// the token's header says so), `exp`, `nbf` and `iat` against `now_s` (with leeway), the
    /// maximum lifetime, the external issuer's `aud` and `iss` when configured, and turns claims into
    /// a Caller: sub must be a valid UserId, role one of student|ta|instructor|admin, cohorts
    /// valid CohortIds. Reject alg "none" and any algorithm not configured.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Verified, AuthError> {
        let presented = self.check(token, now_s, 0)?;
        Ok(Verified {
            caller: presented.caller,
            expires_at_s: presented.exp,
        })
    }

    /// [`Verifier::verify`] for a token presented to be extended (a classroom node's
    /// `POST /api/token/refresh`): the same checks, except that a token expired less than
    /// `grace_s` ago (beyond the leeway) still passes, and the answer carries what the
    /// extension is bounded by (`iat`, `orig_exp`).
    pub fn verify_for_refresh(
        &self,
        token: &str,
        now_s: u64,
        grace_s: u64,
    ) -> Result<Presented, AuthError> {
        self.check(token, now_s, grace_s)
    }

    /// Every check of [`Verifier::verify`], with `exp` allowed `grace_s` beyond the leeway.
    fn check(&self, token: &str, now_s: u64, grace_s: u64) -> Result<Presented, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > TOKEN_LEN_MAX_BYTES {
            return Err(AuthError::Malformed(format!(
                "the token is {} bytes long, the limit is {TOKEN_LEN_MAX_BYTES}",
                token.len()
            )));
        }
        // The header is read unverified only to pick the key; `decode` checks it again against
        // the one algorithm we allow for that key. `none` is not an `Algorithm`, so a token
        // claiming it fails here.
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            AuthError::Malformed(format!("unreadable header or unsupported algorithm: {e}"))
        })?;
        let keys = &*self.inner;
        let mut external = false;
        let key = match (header.alg, &keys.hs256, &keys.public) {
            (Algorithm::HS256, Some(secret), _) => secret,
            (alg, _, Some((public_alg, public))) if alg == *public_alg => {
                external = true;
                public
            }
            (alg, _, _) => {
                return Err(AuthError::Malformed(format!(
                    "algorithm {alg:?} is not accepted"
                )));
            }
        };

        let mut validation = Validation::new(header.alg);
        // `exp` is checked below against the caller's `now_s`, not the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // No audience is configured, so an `aud` claim (which LMS issuers add) is not checked.
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
        let Decoded {
            claims,
            aud,
            iss,
            orig_exp,
        } = jsonwebtoken::decode::<Decoded>(token, key, &validation)
            .map_err(|e| classify(e.into_kind()))?
            .claims;

        // Every comparison saturates: a claim near u64::MAX must not overflow.
        let leeway = keys.leeway_s;
        if claims.exp.saturating_add(leeway).saturating_add(grace_s) < now_s {
            return Err(AuthError::Expired);
        }
        if claims.nbf.unwrap_or(0) > now_s.saturating_add(leeway)
            || claims.iat > now_s.saturating_add(leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        if claims.exp > now_s.saturating_add(keys.lifetime_max_s) {
            return Err(AuthError::TooLong);
        }
        if external {
            keys.check_issuer(aud.as_ref(), iss.as_deref())?;
        }
        let (exp, iat) = (claims.exp, claims.iat);
        let caller = caller_from(claims.sub, claims.name, &claims.role, claims.cohorts)?;
        Ok(Presented {
            caller,
            exp,
            iat,
            // Only the cluster's own extensions carry the bound: an outside issuer's claim of
            // that name means nothing here, and must not move the extension cap.
            orig_exp: if external { None } else { orig_exp },
        })
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("hs256", &self.inner.hs256.is_some())
            .field("public", &self.inner.public.as_ref().map(|(alg, _)| *alg))
            .field("leeway_s", &self.inner.leeway_s)
            .field("lifetime_max_s", &self.inner.lifetime_max_s)
            .field("audience", &self.inner.audience)
            .field("issuer", &self.inner.issuer)
            .finish()
    }
}

/// HS256-signs claims (used by `lectern token mint`, the demo links and tests).
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    let key = EncodingKey::from_secret(secret)
        .map_err(|e| AuthError::Config(format!("HS256 secret: {e}")))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| AuthError::Config(format!("sign the token: {e}")))
}

/// The claim an extended token carries: the `exp` its issuer gave the first token of the
/// chain, seconds since the Unix epoch. A classroom node bounds every extension by it, so
/// extending an extension does not move the bound.
pub const ORIG_EXP_CLAIM: &str = "orig_exp";

/// HS256-signs `claims` as an extension of a token whose issuer gave it `orig_exp` (see
/// [`ORIG_EXP_CLAIM`]).
pub fn mint_extension(secret: &[u8], claims: &Claims, orig_exp: u64) -> Result<String, AuthError> {
    /// The claims with the bound every later extension keeps.
    #[derive(Serialize)]
    struct Extended<'a> {
        #[serde(flatten)]
        claims: &'a Claims,
        orig_exp: u64,
    }
    let key = EncodingKey::from_secret(secret)
        .map_err(|e| AuthError::Config(format!("HS256 secret: {e}")))?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Extended { claims, orig_exp },
        &key,
    )
    .map_err(|e| AuthError::Config(format!("sign the token: {e}")))
}

/// The token of an HTTP request: `Authorization: Bearer …`, else cookie `lectern_token`, else
/// query `access_token` or `token` (EventSource cannot set headers; the demo links carry
/// `?token=`). `query` is the raw query string, without the `?`. Empty values are skipped.
///
/// The cookie is the one credential a browser adds by itself, so another site's page could
/// ride on it (CSRF, cross-site WebSocket hijacking): it counts only when
/// [`origin_allowed`]; otherwise, if nothing else carries a token, the request is refused with
/// [`AuthError::ForeignOrigin`]. A bearer token or a query token is never sent by a browser on
/// its own, so those pass from any origin.
pub fn token_from_parts(
    headers: &HeaderMap,
    query: Option<&str>,
    allowed_origins: &[String],
) -> Result<Option<String>, AuthError> {
    if let Some(token) = bearer(headers) {
        return Ok(Some(token));
    }
    let from_cookie = cookie(headers);
    if from_cookie.is_some() && origin_allowed(headers, allowed_origins) {
        return Ok(from_cookie);
    }
    let from_query =
        query.and_then(|q| query_param(q, "access_token").or_else(|| query_param(q, "token")));
    match (from_query, from_cookie) {
        (Some(token), _) => Ok(Some(token)),
        (None, Some(_)) => Err(AuthError::ForeignOrigin),
        (None, None) => Ok(None),
    }
}

/// Whether a request's `Origin` may use the cookie: no `Origin` at all (not a browser, or a
/// same-origin GET), the request's own `Host` (the node's own pages), or one of `allowed`
/// (compared without a trailing `/`, ASCII case-insensitively). `Origin: null` is refused.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut origins = headers.get_all(ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return true;
    };
    if origins.next().is_some() {
        return false;
    }
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h.trim()))
}

/// The keys a [`Verifier`] holds, and what it checks besides the signature.
struct Keys {
    hs256: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    leeway_s: u64,
    lifetime_max_s: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Keys {
    /// An external issuer's token must name the configured audience and issuer, so a token
    /// the same issuer minted for another application is not accepted here.
    fn check_issuer(
        &self,
        aud: Option<&serde_json::Value>,
        iss: Option<&str>,
    ) -> Result<(), AuthError> {
        if let Some(want) = &self.audience {
            let ok = match aud {
                Some(serde_json::Value::String(a)) => a == want,
                Some(serde_json::Value::Array(list)) => {
                    list.iter().any(|a| a.as_str() == Some(want.as_str()))
                }
                _ => false,
            };
            if !ok {
                return Err(AuthError::WrongIssuer(format!("`aud` must name {want:?}")));
            }
        }
        if let Some(want) = &self.issuer
            && iss != Some(want.as_str())
        {
            return Err(AuthError::WrongIssuer(format!("`iss` must be {want:?}")));
        }
        Ok(())
    }
}

/// The claims as decoded: Lectern's own, and the registered ones only the verifier reads.
#[derive(Deserialize)]
struct Decoded {
    #[serde(flatten)]
    claims: Claims,
    /// Audience: a string or a list of strings.
    #[serde(default)]
    aud: Option<serde_json::Value>,
    /// Issuer.
    #[serde(default)]
    iss: Option<String>,
    /// Set by a classroom node's extension ([`ORIG_EXP_CLAIM`]).
    #[serde(default)]
    orig_exp: Option<u64>,
}

/// Maps a jsonwebtoken failure to the case a client can act on.
fn classify(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::InvalidClaims(format!("missing claim `{claim}`"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::InvalidClaims(format!("claim `{claim}` has the wrong type"))
        }
        // The header was already parsed, so a JSON error after a good signature is the claims'.
        ErrorKind::Json(e) => AuthError::InvalidClaims(e.to_string()),
        ErrorKind::InvalidAlgorithm => {
            AuthError::Malformed("the algorithm does not match the key".to_owned())
        }
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

/// Turns verified claims into a caller, validating every id and the role.
fn caller_from(
    sub: String,
    name: String,
    role: &str,
    cohorts: Vec<String>,
) -> Result<Caller, AuthError> {
    let user = UserId::new(sub).map_err(|e| AuthError::InvalidClaims(format!("sub: {e}")))?;
    let role = Role::parse(role).ok_or_else(|| {
        AuthError::InvalidClaims(format!(
            "role {role:?} is not one of student, ta, instructor, admin"
        ))
    })?;
    let cohorts = cohorts
        .into_iter()
        .map(|c| {
            CohortId::new(c.clone())
                .map_err(|e| AuthError::InvalidClaims(format!("cohort {c:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Caller {
        user,
        name,
        role,
        cohorts,
    })
}

/// `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let value = value.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
    })
}

/// The `lectern_token` cookie, from any `Cookie` header.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(COOKIE).iter().find_map(|value| {
        value.to_str().ok()?.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            let value = value.trim().trim_matches('"');
            (name.trim() == TOKEN_COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
    })
}

/// The first non-empty value of `key` in a URL query string, percent-decoded.
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if percent_decode(k)? != key {
            return None;
        }
        let v = percent_decode(v)?;
        (!v.is_empty()).then_some(v)
    })
}

/// Decodes `%XX` escapes and `+` (form encoding's space); `None` if the result is not UTF-8
/// or an escape is broken.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Seconds since the Unix epoch (0 on a clock set before it): the clock tokens' `exp` and
/// `nbf` are read against.
pub(crate) fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
