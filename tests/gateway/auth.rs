//! Token verification at the gateway's boundary: what `Verifier::verify` accepts and refuses
//! (signature, algorithm, expiry against a passed-in clock, claim validation), an external
//! issuer's EdDSA key, where a request's token is found, and that a token minted the way
//! `lectern token mint` does it verifies with the secret the node resolves.

use axum::http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lectern_gateway::auth::{
    AuthConfig, AuthError, Claims, PublicKey, PublicKeyAlg, TOKEN_LEN_MAX_BYTES, Verifier, mint,
    token_from_parts,
};
use lectern_model::Role;
use lectern_node::config::{Config, Overrides};

use crate::support::TempDir;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// The clock every test passes to `verify`, seconds since the epoch.
const NOW_S: u64 = 1_700_000_000;
const LEEWAY_S: u64 = 30;

/// An Ed25519 key pair made once with `openssl genpkey -algorithm ed25519` (test-only).
pub(super) const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIOzPSXLEjkS5BkSjPJVqEmaLstG/FKdnxXYo9/6P2oCu
-----END PRIVATE KEY-----
";
pub(super) const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAsy3CQOoFe9pLrRY/b6gqqmSPYugWmb0mwtYY+W5FcKU=
-----END PUBLIC KEY-----
";
/// Another Ed25519 private key, which the verifier does not trust.
const ED_OTHER_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIIEGfBwtaQvjqFAtlLvaM6zgyNjN2Yjf726XuqIXJjgK
-----END PRIVATE KEY-----
";

/// base64url of `{"alg":"none","typ":"JWT"}`.
const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

fn claims(sub: &str, role: &str, exp: u64) -> Claims {
    Claims {
        sub: sub.to_owned(),
        name: format!("{sub} name"),
        role: role.to_owned(),
        cohorts: vec!["c1".to_owned(), "c2".to_owned()],
        exp,
        iat: NOW_S,
        nbf: None,
    }
}

fn hs256_only() -> Verifier {
    Verifier::new(&AuthConfig {
        hs256_secret: SECRET.to_vec(),
        public_key: None,
        leeway_s: LEEWAY_S,
        ..AuthConfig::default()
    })
    .expect("an HS256-only config is valid")
}

fn with_ed_key() -> Verifier {
    Verifier::new(&AuthConfig {
        hs256_secret: SECRET.to_vec(),
        public_key: Some(PublicKey {
            alg: PublicKeyAlg::EdDsa,
            pem: ED_PUBLIC.to_owned(),
        }),
        leeway_s: LEEWAY_S,
        ..AuthConfig::default()
    })
    .expect("the test Ed25519 public key is a valid PEM")
}

fn minted(c: &Claims) -> String {
    mint(SECRET, c).expect("minting with a non-empty secret succeeds")
}

fn refused(v: &Verifier, token: &str) -> AuthError {
    match v.verify(token, NOW_S) {
        Ok(ok) => panic!("token accepted as {:?}", ok.caller),
        Err(e) => e,
    }
}

fn ed_signed(private_pem: &str, c: &Claims) -> String {
    let key = EncodingKey::from_ed_pem(private_pem.as_bytes()).expect("test key is a valid PEM");
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), c, &key).expect("EdDSA signing works")
}

#[test]
fn round_trip() {
    let token = minted(&claims("u1", "instructor", NOW_S + 3600));
    let verified = hs256_only()
        .verify(&token, NOW_S)
        .expect("a fresh token verifies");
    assert_eq!(verified.caller.user.as_str(), "u1");
    assert_eq!(verified.caller.name, "u1 name");
    assert_eq!(verified.caller.role, Role::Instructor);
    let cohorts: Vec<&str> = verified.caller.cohorts.iter().map(|c| c.as_str()).collect();
    assert_eq!(cohorts, ["c1", "c2"]);
    assert_eq!(verified.expires_at_s, NOW_S + 3600);
}

#[test]
fn optional_claims_default() {
    // An LMS may send only what it must; `name`, `cohorts` and `iat` default, and claims we do
    // not know (here `aud` and `iss`) are ignored rather than refused.
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "u1", "role": "student", "exp": NOW_S + 60,
            "aud": "lms", "iss": "https://lms.example"}),
        &EncodingKey::from_secret(SECRET).expect("non-empty secret"),
    )
    .expect("signing works");
    let verified = hs256_only()
        .verify(&token, NOW_S)
        .expect("minimal claims verify");
    assert_eq!(verified.caller.role, Role::Student);
    assert!(verified.caller.cohorts.is_empty());
    assert_eq!(verified.caller.name, "");
}

#[test]
fn wrong_secret_is_a_bad_signature() {
    let token = mint(
        b"another secret, just as long....",
        &claims("u1", "student", NOW_S + 60),
    )
    .expect("minting works");
    let e = refused(&hs256_only(), &token);
    assert_eq!(e, AuthError::BadSignature);
    assert_eq!(e.code(), "bad_signature");
}

#[test]
fn expiry_is_checked_against_the_passed_clock_with_leeway() {
    let v = hs256_only();
    let past_leeway = minted(&claims("u1", "student", NOW_S - LEEWAY_S - 1));
    let e = refused(&v, &past_leeway);
    assert_eq!(e, AuthError::Expired);
    assert_eq!(e.code(), "token_expired");

    for exp in [NOW_S - LEEWAY_S, NOW_S - 1, NOW_S] {
        let token = minted(&claims("u1", "student", exp));
        v.verify(&token, NOW_S)
            .unwrap_or_else(|e| panic!("exp = now - {} is within leeway: {e}", NOW_S - exp));
    }

    // The system clock is not consulted: a token that expired decades ago verifies at a
    // `now_s` before its expiry.
    // (`iat` is 0 here: one after `now_s` would mean "issued in the future".)
    let old = minted(&Claims {
        iat: 0,
        ..claims("u1", "student", 1_000)
    });
    assert!(v.verify(&old, 900).is_ok());
}

/// Kills: `nbf` ignored; the lifetime cap missing or off by the boundary.
#[test]
fn not_before_and_the_longest_lifetime_are_checked_against_the_passed_clock() {
    use lectern_gateway::auth::TOKEN_LIFETIME_MAX_S;
    let v = hs256_only();
    let at = |nbf: u64| {
        minted(&Claims {
            nbf: Some(nbf),
            ..claims("u1", "student", NOW_S + 3600)
        })
    };
    let early = refused(&v, &at(NOW_S + LEEWAY_S + 1));
    assert_eq!(early, AuthError::NotYetValid);
    assert_eq!(early.code(), "token_not_yet_valid");
    for nbf in [NOW_S + LEEWAY_S, NOW_S, 0] {
        assert!(v.verify(&at(nbf), NOW_S).is_ok(), "nbf = {nbf}");
    }
    let longest = minted(&claims("u1", "student", NOW_S + TOKEN_LIFETIME_MAX_S));
    assert!(v.verify(&longest, NOW_S).is_ok());
    for exp in [NOW_S + TOKEN_LIFETIME_MAX_S + 1, u64::MAX] {
        let e = refused(&v, &minted(&claims("u1", "student", exp)));
        assert_eq!(e, AuthError::TooLong, "exp = {exp}");
        assert_eq!(e.code(), "token_too_long");
    }
}

#[test]
fn alg_none_is_refused() {
    let good = minted(&claims("u1", "admin", NOW_S + 60));
    let payload = good.split('.').nth(1).expect("a JWT has three parts");
    let v = hs256_only();
    for token in [
        format!("{NONE_HEADER}.{payload}."),
        format!(
            "{NONE_HEADER}.{payload}.{}",
            good.rsplit('.').next().unwrap_or("")
        ),
    ] {
        let e = refused(&v, &token);
        assert_eq!(e.code(), "bad_token", "{e}");
    }
}

#[test]
fn tampered_payload_is_refused() {
    // The payload of a token minted for an admin, under the signature of a student's token.
    let student = minted(&claims("u1", "student", NOW_S + 60));
    let admin = minted(&claims("u1", "admin", NOW_S + 60));
    let parts: Vec<&str> = student.split('.').collect();
    let admin_payload = admin.split('.').nth(1).expect("a JWT has three parts");
    let forged = format!("{}.{admin_payload}.{}", parts[0], parts[2]);
    assert_eq!(refused(&hs256_only(), &forged), AuthError::BadSignature);
}

#[test]
fn garbage_and_oversized_tokens_are_malformed() {
    let v = hs256_only();
    assert_eq!(refused(&v, ""), AuthError::Missing);
    assert_eq!(refused(&v, "   ").code(), "missing_token");
    for token in ["abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        assert_eq!(refused(&v, token).code(), "bad_token", "{token:?}");
    }
    let huge = "a".repeat(TOKEN_LEN_MAX_BYTES + 1);
    assert_eq!(refused(&v, &huge).code(), "bad_token");
}

#[test]
fn algorithms_not_configured_are_refused() {
    // HS384 with the right secret: a valid signature, but not an algorithm we accept.
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims("u1", "student", NOW_S + 60),
        &EncodingKey::from_secret(SECRET).expect("non-empty secret"),
    )
    .expect("signing works");
    assert_eq!(refused(&hs256_only(), &hs384).code(), "bad_token");

    // A correctly signed EdDSA token, to a verifier that trusts no public key.
    let ed = ed_signed(ED_PRIVATE, &claims("u1", "student", NOW_S + 60));
    assert_eq!(refused(&hs256_only(), &ed).code(), "bad_token");
}

#[test]
fn bad_claims_are_refused() {
    let v = hs256_only();
    let mut bad_cohort = claims("u1", "student", NOW_S + 60);
    bad_cohort.cohorts.push("c1/../c3".to_owned());
    let cases = [
        ("role", claims("u1", "teacher", NOW_S + 60)),
        ("role case", claims("u1", "Admin", NOW_S + 60)),
        (
            "sub with a slash",
            claims("u1/admin", "student", NOW_S + 60),
        ),
        ("empty sub", claims("", "student", NOW_S + 60)),
        ("cohort", bad_cohort),
    ];
    for (what, c) in cases {
        let e = refused(&v, &minted(&c));
        assert!(
            matches!(e, AuthError::InvalidClaims(_)),
            "{what}: expected InvalidClaims, got {e:?}"
        );
        assert_eq!(e.code(), "bad_claims");
    }

    // A token without `exp` never expires: refused even though the signature is good.
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "u1", "role": "student"}),
        &EncodingKey::from_secret(SECRET).expect("non-empty secret"),
    )
    .expect("signing works");
    assert_eq!(refused(&v, &no_exp).code(), "bad_claims");
}

#[test]
fn eddsa_public_key_verifies_an_external_issuer() {
    let v = with_ed_key();
    let token = ed_signed(ED_PRIVATE, &claims("lms-42", "ta", NOW_S + 60));
    let verified = v
        .verify(&token, NOW_S)
        .expect("the trusted key's token verifies");
    assert_eq!(verified.caller.user.as_str(), "lms-42");
    assert_eq!(verified.caller.role, Role::Ta);

    // HS256 keeps working next to the public key.
    assert!(
        v.verify(&minted(&claims("u1", "student", NOW_S + 60)), NOW_S)
            .is_ok()
    );

    // Another key's signature, and expiry, are still checked.
    let other = ed_signed(ED_OTHER_PRIVATE, &claims("lms-42", "ta", NOW_S + 60));
    assert_eq!(refused(&v, &other), AuthError::BadSignature);
    let expired = ed_signed(ED_PRIVATE, &claims("lms-42", "ta", NOW_S - LEEWAY_S - 1));
    assert_eq!(refused(&v, &expired), AuthError::Expired);

    // An outside issuer's `orig_exp` is not the cluster's extension bound: ignored, so it
    // cannot move a classroom node's cap; the cluster's own extensions keep theirs.
    let mut with_bound = serde_json::to_value(claims("lms-42", "ta", NOW_S + 60)).unwrap();
    with_bound["orig_exp"] = serde_json::json!(NOW_S + 3_600_000);
    let outside = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &with_bound,
        &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("test key is a valid PEM"),
    )
    .expect("EdDSA signing works");
    assert_eq!(
        v.verify_for_refresh(&outside, NOW_S, 0)
            .expect("verifies")
            .orig_exp,
        None
    );
    let own = lectern_gateway::auth::mint_extension(
        SECRET,
        &claims("u1", "student", NOW_S + 60),
        NOW_S + 30,
    )
    .expect("signing works");
    assert_eq!(
        v.verify_for_refresh(&own, NOW_S, 0)
            .expect("verifies")
            .orig_exp,
        Some(NOW_S + 30)
    );

    // A header claiming RS256 is not accepted when the configured key is EdDSA.
    let parts: Vec<&str> = token.split('.').collect();
    let rs256_header = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"; // {"alg":"RS256","typ":"JWT"}
    let relabelled = format!("{rs256_header}.{}.{}", parts[1], parts[2]);
    assert_eq!(refused(&v, &relabelled).code(), "bad_token");
}

#[test]
fn a_bad_pem_fails_at_startup() {
    for alg in [PublicKeyAlg::EdDsa, PublicKeyAlg::Rs256] {
        let config = AuthConfig {
            hs256_secret: SECRET.to_vec(),
            public_key: Some(PublicKey {
                alg,
                pem: "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n".into(),
            }),
            leeway_s: LEEWAY_S,
            ..AuthConfig::default()
        };
        let e = Verifier::new(&config).expect_err("a garbage PEM is refused");
        assert_eq!(e.code(), "auth_config", "{alg:?}: {e}");
    }
    let nothing = AuthConfig {
        hs256_secret: Vec::new(),
        public_key: None,
        leeway_s: LEEWAY_S,
        ..AuthConfig::default()
    };
    assert!(Verifier::new(&nothing).is_err(), "no key at all is refused");
}

#[test]
fn token_from_parts_precedence() {
    let q = Some("x=1&access_token=from-access&token=from-token");
    let mut headers = HeaderMap::new();
    assert_eq!(
        token_from_parts(&headers, None, &[]).expect("no Origin: the cookie counts"),
        None
    );
    assert_eq!(
        token_from_parts(&headers, Some("token=t%2Ea"), &[])
            .expect("no Origin: the cookie counts")
            .as_deref(),
        Some("t.a")
    );
    assert_eq!(
        token_from_parts(&headers, Some("token=&x=1"), &[]).expect("no Origin: the cookie counts"),
        None,
        "empty is absent"
    );
    assert_eq!(
        token_from_parts(&headers, q, &[])
            .expect("no Origin: the cookie counts")
            .as_deref(),
        Some("from-access")
    );

    headers.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
    headers.append(
        header::COOKIE,
        HeaderValue::from_static("a=b; lectern_token=from-cookie"),
    );
    assert_eq!(
        token_from_parts(&headers, q, &[])
            .expect("no Origin: the cookie counts")
            .as_deref(),
        Some("from-cookie")
    );

    // Another scheme is not a bearer token: the cookie still wins.
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic dTpw"),
    );
    assert_eq!(
        token_from_parts(&headers, q, &[])
            .expect("no Origin: the cookie counts")
            .as_deref(),
        Some("from-cookie")
    );

    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer  from-header "),
    );
    assert_eq!(
        token_from_parts(&headers, q, &[])
            .expect("no Origin: the cookie counts")
            .as_deref(),
        Some("from-header")
    );
}

#[test]
fn cli_mint_verifies_with_the_nodes_secret() {
    // `lectern token mint --data-dir DIR` and the node resolve the secret the same way.
    let dir = TempDir::new("auth-mint");
    let load = || {
        Config::load(
            Overrides::default().flag("data-dir", dir.path().display().to_string()),
            &|_| None,
        )
        .expect("defaults load")
    };
    let cli_secret = load().resolve_secret().expect("the CLI creates the secret");
    let token = mint(&cli_secret, &claims("u1", "student", NOW_S + 86_400)).expect("mint");

    let node = load();
    let verifier = Verifier::new(&AuthConfig {
        hs256_secret: node.resolve_secret().expect("the node reads the secret"),
        public_key: None,
        leeway_s: node.auth.leeway_s,
        ..AuthConfig::default()
    })
    .expect("valid config");
    let verified = verifier
        .verify(&token, NOW_S)
        .expect("the node accepts the CLI's token");
    assert_eq!(verified.caller.user.as_str(), "u1");
}
