//! Token extension on a classroom node (`POST /api/token/refresh`): a user who signed in while
//! the school's uplink was up keeps working through an outage, since the issuer (an LMS, the
//! region's operator) cannot be reached to renew their token.
//!
//! A classroom node mints, with the cluster's HS256 key, a fresh token for a token that is
//! still valid (or expired less than [`REFRESH_GRACE_S`] ago) of a member of its cohorts: the
//! same user, name and role, the cohorts narrowed to those this node serves whose roster lists
//! the user (so a student removed from the roster is refused even offline), and an `exp` at
//! most [`REFRESHED_TOKEN_LIFETIME_S`] ahead and never past `orig_exp + extend_max_s`, where
//! `orig_exp` is the expiry the issuer gave the first token of the chain (carried in the
//! [`auth::ORIG_EXP_CLAIM`] claim by every extension, so extending an extension does not move
//! the bound). Nothing is stored: the token is the state, so a restart of the node changes
//! nothing. [`extend`] decides, without IO; the handler reads the rosters and signs.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lectern_model::{Caller, CohortId, DocId, Role};
use serde_json::json;

use crate::Gateway;
use crate::auth::{self, AuthError, Claims, Presented};
use crate::config::ClassroomPolicy;
use crate::error::AppError;

/// How long a token minted by an extension lives at most, in seconds: the page asks again
/// well before (`lectern-web`'s `conn.js`, `keepTokenFresh`), so a short life costs nothing,
/// and a copied token is good for little.
pub const REFRESHED_TOKEN_LIFETIME_S: u64 = 4 * 3600;

/// How long after its expiry (beyond the verifier's leeway) a token may still be extended, in
/// seconds: a laptop asleep or a node restarting over the moment a token ended does not log
/// its user out.
pub const REFRESH_GRACE_S: u64 = 15 * 60;

/// Why a token was not extended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// This node extends no token (not a classroom node, `token_extend_max_h = 0`, or no
    /// HS256 key to sign with).
    #[error(
        "this node does not extend tokens (only a classroom node does, within classroom.token_extend_max_h)"
    )]
    Off,
    /// Admins are the cluster's operators, not members of a classroom's cohorts.
    #[error("an admin's token is not extended by a classroom node")]
    Admin,
    /// The token names none of this node's cohorts, or no roster of them lists the user.
    #[error("the token's user is not on the roster of a cohort this classroom node serves")]
    NotMember,
    /// The token's chain already reached `orig_exp + extend_max_s`.
    #[error("the token cannot be extended further: sign in again with the issuer")]
    CapReached,
}

impl RefreshError {
    /// A stable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            RefreshError::Off => "token_refresh_off",
            RefreshError::Admin => "role_not_extendable",
            RefreshError::NotMember => "not_classroom_member",
            RefreshError::CapReached => "token_extend_cap",
        }
    }
}

impl From<RefreshError> for AppError {
    fn from(e: RefreshError) -> Self {
        AppError::new(StatusCode::FORBIDDEN, e.code(), e.to_string())
    }
}

/// An extension: the new token's claims and the bound it carries on.
#[derive(Debug, Clone)]
pub struct Extension {
    /// The claims to sign.
    pub claims: Claims,
    /// The chain's `orig_exp`.
    pub orig_exp: u64,
    /// The latest `exp` any extension of this chain may reach.
    pub cap_s: u64,
}

/// Decides an extension of `presented` at `now_s`, given `members`: the cohorts of the token
/// that this node serves and whose roster lists the user. Pure: the caller verified the token
/// (within [`REFRESH_GRACE_S`]) and read the rosters.
pub fn extend(
    policy: &ClassroomPolicy,
    presented: &Presented,
    members: &[CohortId],
    now_s: u64,
) -> Result<Extension, RefreshError> {
    if policy.extend_max_s == 0 {
        return Err(RefreshError::Off);
    }
    let caller = &presented.caller;
    if caller.role == Role::Admin {
        return Err(RefreshError::Admin);
    }
    // Never wider: only cohorts the token already grants, this node serves, and the roster
    // confirms.
    let cohorts: Vec<CohortId> = caller
        .cohorts
        .iter()
        .filter(|c| policy.cohorts.contains(c) && members.contains(c))
        .cloned()
        .collect();
    if cohorts.is_empty() {
        return Err(RefreshError::NotMember);
    }
    let orig_exp = presented.orig_exp.unwrap_or(presented.exp);
    let cap_s = orig_exp.saturating_add(policy.extend_max_s);
    let exp = now_s
        .saturating_add(REFRESHED_TOKEN_LIFETIME_S)
        .min(cap_s)
        // A token that lives longer already keeps its own end: an extension never shortens.
        .max(presented.exp.min(cap_s));
    if exp <= now_s {
        return Err(RefreshError::CapReached);
    }
    Ok(Extension {
        claims: Claims {
            sub: caller.user.as_str().to_owned(),
            name: caller.name.clone(),
            role: caller.role.as_str().to_owned(),
            cohorts: cohorts.iter().map(|c| c.as_str().to_owned()).collect(),
            exp,
            iat: now_s,
            nbf: None,
        },
        orig_exp,
        cap_s,
    })
}

/// The refresh route.
pub(crate) fn routes(gw: Gateway) -> Router {
    Router::new()
        .route("/api/token/refresh", post(refresh))
        .with_state(gw)
}

/// `POST /api/token/refresh` with the token to extend (bearer, cookie or query, as every
/// route): `{token, expiresAt, origExp, capAt, cohorts}`. Counted by result in
/// `lectern_token_extensions_total`.
async fn refresh(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, AppError> {
    let result = extend_for(&gw, &headers, &uri).await;
    gw.metrics()
        .token_extension(result.as_ref().map_or_else(|e| e.code, |_| "ok"));
    result
}

/// The work of [`refresh`].
async fn extend_for(gw: &Gateway, headers: &HeaderMap, uri: &Uri) -> Result<Response, AppError> {
    let Some((policy, secret)) = gw.classroom_policy().filter(|(p, _)| p.extend_max_s > 0) else {
        return Err(RefreshError::Off.into());
    };
    let token = gw
        .request_token(headers, uri.query())?
        .ok_or(AuthError::Missing)?;
    let now_s = auth::unix_now_s();
    let presented = gw.verify_for_refresh(&token, now_s, REFRESH_GRACE_S)?;
    if presented.caller.role == Role::Admin {
        return Err(RefreshError::Admin.into());
    }
    // A refresh reads documents: it pays like a read.
    gw.take_command_token(presented.caller.user.as_str())?;
    let members = roster_members(gw, &policy, &presented.caller).await;
    let ext = extend(&policy, &presented, &members, now_s)?;
    let signed = auth::mint_extension(&secret, &ext.claims, ext.orig_exp)?;
    tracing::info!(
        user = %presented.caller.user,
        exp = ext.claims.exp,
        cap = ext.cap_s,
        "token extended"
    );
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "token": signed,
            "expiresAt": ext.claims.exp,
            "origExp": ext.orig_exp,
            "capAt": ext.cap_s,
            "cohorts": ext.claims.cohorts,
        })),
    )
        .into_response())
}

/// The cohorts of `caller`'s token that `policy` serves and whose roster (on this node) lists
/// the user, not removed, with at least the token's role: a TA demoted to student on the
/// roster is not confirmed as a TA, so the token is not extended with staff rights. A cohort
/// this node does not store lists nobody.
async fn roster_members(gw: &Gateway, policy: &ClassroomPolicy, caller: &Caller) -> Vec<CohortId> {
    let mut members = Vec::new();
    for cohort in caller.cohorts.iter().filter(|c| policy.cohorts.contains(c)) {
        let user = caller.user.as_str().to_owned();
        let listed = gw
            .hub()
            .read(DocId::Cohort(cohort.clone()), move |r| r.roster_role(&user))
            .await
            .ok()
            .flatten();
        if listed.is_some_and(|role| rank(role) >= rank(caller.role)) {
            members.push(cohort.clone());
        }
    }
    members
}

/// Roles from least to most rights.
fn rank(role: Role) -> u8 {
    match role {
        Role::Student => 0,
        Role::Ta => 1,
        Role::Instructor => 2,
        Role::Admin => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cohort(s: &str) -> CohortId {
        s.parse().expect("a valid cohort id")
    }

    fn policy() -> ClassroomPolicy {
        ClassroomPolicy {
            cohorts: vec![cohort("c1"), cohort("c2")],
            extend_max_s: 24 * 3600,
        }
    }

    fn presented(role: Role, cohorts: &[&str], exp: u64, orig_exp: Option<u64>) -> Presented {
        Presented {
            caller: Caller {
                user: "u1".parse().expect("a valid user id"),
                name: "U".into(),
                role,
                cohorts: cohorts.iter().map(|c| cohort(c)).collect(),
            },
            exp,
            iat: 0,
            orig_exp,
        }
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn an_extension_keeps_the_identity_and_narrows_the_cohorts() {
        let p = presented(Role::Ta, &["c1", "c9", "c2"], NOW + 60, None);
        let e = extend(&policy(), &p, &[cohort("c1"), cohort("c9")], NOW).expect("extended");
        assert_eq!(e.claims.sub, "u1");
        assert_eq!(e.claims.role, "ta");
        // c9 is not served here, c2 does not list the user.
        assert_eq!(e.claims.cohorts, vec!["c1".to_owned()]);
        assert_eq!(e.claims.exp, NOW + REFRESHED_TOKEN_LIFETIME_S);
        assert_eq!(e.orig_exp, NOW + 60);
        assert_eq!(e.cap_s, NOW + 60 + 24 * 3600);
    }

    #[test]
    fn the_cap_is_the_first_tokens_expiry_plus_the_maximum() {
        let orig = NOW - 24 * 3600 + 100;
        let p = presented(Role::Student, &["c1"], NOW + 10, Some(orig));
        let e = extend(&policy(), &p, &[cohort("c1")], NOW).expect("extended");
        assert_eq!(e.claims.exp, NOW + 100, "capped at orig_exp + 24 h");
        assert_eq!(e.orig_exp, orig, "the bound is carried on, not moved");
        let past = presented(Role::Student, &["c1"], NOW + 10, Some(NOW - 24 * 3600));
        assert_eq!(
            extend(&policy(), &past, &[cohort("c1")], NOW).unwrap_err(),
            RefreshError::CapReached
        );
    }

    #[test]
    fn a_long_token_is_never_shortened_nor_widened() {
        let p = presented(Role::Student, &["c1"], NOW + 20 * 3600, None);
        let e = extend(&policy(), &p, &[cohort("c1")], NOW).expect("extended");
        assert_eq!(e.claims.exp, NOW + 20 * 3600);
    }

    #[test]
    fn admins_outsiders_and_a_disabled_policy_are_refused() {
        let p = presented(Role::Admin, &["c1"], NOW + 60, None);
        assert_eq!(
            extend(&policy(), &p, &[cohort("c1")], NOW).unwrap_err(),
            RefreshError::Admin
        );
        let p = presented(Role::Student, &["c1"], NOW + 60, None);
        assert_eq!(
            extend(&policy(), &p, &[], NOW).unwrap_err(),
            RefreshError::NotMember
        );
        let p = presented(Role::Student, &["c9"], NOW + 60, None);
        assert_eq!(
            extend(&policy(), &p, &[cohort("c9")], NOW).unwrap_err(),
            RefreshError::NotMember
        );
        let off = ClassroomPolicy {
            extend_max_s: 0,
            ..policy()
        };
        let p = presented(Role::Student, &["c1"], NOW + 60, None);
        assert_eq!(
            extend(&off, &p, &[cohort("c1")], NOW).unwrap_err(),
            RefreshError::Off
        );
    }
}
