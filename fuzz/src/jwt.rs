//! Bearer tokens through the gateway's `auth::Verifier` (HS256 with a secret, and an external
//! issuer's Ed25519 key with an audience and an issuer to check).
//!
//! An input starting with `{` is a token's claims: the harness signs them, as they are, with
//! the HS256 secret, so the claim checks behind the signature are fuzzed too; an input
//! starting with `#` is the value of an `Authorization` header, found with
//! `token_from_parts`; any other input is a token as a client sends it.
//!
//! Invariants: nothing panics; a refusal has a stable code; an accepted token expires no
//! earlier than now minus the leeway and no later than now plus the lifetime limit; the caller
//! of an accepted token, minted again, verifies to the same caller; allocation is bounded by
//! the input's size.

use std::sync::OnceLock;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use lectern_gateway::Verifier;
use lectern_gateway::auth::{
    self, AuthConfig, Claims, LEEWAY_DEFAULT_S, PublicKey, PublicKeyAlg,
    TOKEN_LIFETIME_MAX_DEFAULT_S,
};

use crate::alloc;

/// The HS256 secret the harness's verifier trusts and signs claims with.
pub const SECRET: &[u8] = b"lectern-fuzz-secret-0123456789abcdef";

/// The external issuer's Ed25519 public key the verifier also trusts (its private key is not
/// kept anywhere: tokens of this algorithm can only fail).
pub const ED25519_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEAVQlp/3zxFw8E/lcSkRKqJ8y6sgW9qQFOL4ddpXNsADI=\n\
-----END PUBLIC KEY-----\n";

/// The clock the harness verifies at, seconds since the Unix epoch (2027-01-15).
pub const NOW_S: u64 = 1_800_000_000;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        Verifier::new(&AuthConfig {
            hs256_secret: SECRET.to_vec(),
            public_key: Some(PublicKey {
                alg: PublicKeyAlg::EdDsa,
                pem: ED25519_PUBLIC_PEM.to_owned(),
            }),
            audience: Some("lectern".to_owned()),
            issuer: Some("https://lms.example".to_owned()),
            ..AuthConfig::default()
        })
        .expect("the harness's verifier")
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let token = match data {
        [b'{', ..] => signed(data),
        [b'#', header @ ..] => {
            let Ok(value) = HeaderValue::from_bytes(header) else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value);
            match auth::token_from_parts(&headers, None, &[]) {
                Ok(Some(token)) => token,
                Ok(None) => return,
                Err(e) => {
                    assert!(!e.code().is_empty());
                    return;
                }
            }
        }
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    let result = alloc::bounded("jwt", data.len(), || verifier().verify(&token, NOW_S));
    match result {
        Ok(verified) => {
            assert!(verified.expires_at_s.saturating_add(LEEWAY_DEFAULT_S) >= NOW_S);
            assert!(verified.expires_at_s <= NOW_S + TOKEN_LIFETIME_MAX_DEFAULT_S);
            let caller = &verified.caller;
            let claims = Claims {
                sub: caller.user.as_str().to_owned(),
                name: caller.name.clone(),
                role: caller.role.as_str().to_owned(),
                cohorts: caller
                    .cohorts
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect(),
                exp: verified.expires_at_s,
                iat: NOW_S,
                nbf: None,
            };
            let again = auth::mint(SECRET, &claims).expect("mint");
            let reverified = verifier()
                .verify(&again, NOW_S)
                .expect("a minted token verifies");
            assert_eq!(&reverified.caller, caller, "the caller's round trip");
        }
        Err(e) => assert!(!e.code().is_empty()),
    }
}

/// A token whose payload is `claims` exactly as given, HS256-signed with [`SECRET`].
pub fn signed(claims: &[u8]) -> String {
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", b64(claims));
    let key = EncodingKey::from_secret(SECRET).expect("an HS256 key");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("sign");
    format!("{message}.{signature}")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
