//! The gateway's settings ([`GatewayConfig`]), given by the node when it builds the gateway:
//! token verification, limits, stream keep-alives, boards, content, the cluster's public URLs,
//! the browser origins that may use the cookie, and a classroom node's policy
//! ([`ClassroomPolicy`]).

use std::sync::Arc;

use lectern_model::CohortId;

use crate::auth::AuthConfig;
use crate::boards::BoardSettings;
use crate::limits::Limits;

/// Gateway settings.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Token verification.
    pub auth: AuthConfig,
    /// Rates, sizes and caps.
    pub limits: Limits,
    /// Seconds between SSE keep-alive comments. Default 15.
    pub keepalive_s: u64,
    /// The key unsubscribe links in emails are signed with (the node's job runner signs them
    /// with the same key). Default: the HS256 token secret; the signed text is
    /// domain-separated, so no signature of one kind passes as the other.
    pub unsubscribe_key: Vec<u8>,
    /// The leaderboard and instructor dashboard streams.
    pub boards: BoardSettings,
    /// The node's content blob store, served at `/content/{sha256}`; `None` serves no content.
    pub content: Option<Arc<lectern_content::BlobStore>>,
    /// The public client URLs of this node and then of the cluster's other nodes, in the order
    /// a page should fail over to them (`GET /api/nodes`; CORS allows their origins). Default
    /// none: pages stay on their node.
    pub nodes: Vec<String>,
    /// Browser origins (`https://class.example`) whose pages may use the `lectern_token`
    /// cookie, besides the request's own host and the origins of [`GatewayConfig::nodes`].
    /// A request with no `Origin` (curl, a server) is not a browser's and passes. Default none.
    pub allowed_origins: Vec<String>,
    /// A classroom node's policy: its cohorts, its token extensions (`POST
    /// /api/token/refresh`) and join codes. Default none: those routes answer
    /// `token_refresh_off` and `join_codes_off`.
    pub classroom: Option<ClassroomPolicy>,
}

impl GatewayConfig {
    /// Defaults around an auth configuration.
    pub fn new(auth: AuthConfig) -> Self {
        GatewayConfig {
            unsubscribe_key: auth.hs256_secret.clone(),
            auth,
            limits: Limits::default(),
            keepalive_s: 15,
            boards: BoardSettings::default(),
            content: None,
            nodes: Vec::new(),
            allowed_origins: Vec::new(),
            classroom: None,
        }
    }
}

/// What a classroom node grants (set by the node from `[classroom]`): token extensions
/// (`refresh.rs`) and join codes (`join.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassroomPolicy {
    /// The cohorts this node serves: an extended token names no other, and join codes are made
    /// for their sessions only.
    pub cohorts: Vec<CohortId>,
    /// How far past the expiry its issuer gave a token an extension may reach, in seconds
    /// (`classroom.token_extend_max_h`); 0 turns extensions off.
    pub extend_max_s: u64,
}
