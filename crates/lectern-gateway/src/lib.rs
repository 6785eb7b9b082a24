//! The client-facing gateway of a node: Socket.IO (a lean WebSocket transport of our own, and
//! socketioxide for long-polling and upgrades), SSE, REST and a long-poll events route, all
//! behind JWT authentication and limits, all speaking to the hub.
//!
//! Every transport turns a request into the same thing: an authenticated
//! [`Caller`](lectern_model::Caller) and a [`Command`](lectern_model::Command) for the hub, or
//! a subscription to a document's events. Authorization is the model's (`lectern-model`), so
//! it is the same on every transport; failures are one [`AppError`] with a stable code.
//!
//! This file is the crate's map: [`Gateway`] and its state live in `gateway.rs`, the HTTP
//! surface is put together in `router.rs`, and each transport or route family has its file.

mod admission;
pub mod auth;
mod boards;
mod commands;
mod config;
mod courses;
mod error;
mod extract;
mod fanout;
mod flags;
mod front;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
pub mod join;
mod limits;
mod metrics;
mod nodes;
mod notifications;
mod page;
mod presence;
pub mod refresh;
mod rest;
mod router;
mod run;
mod sio;
mod socket;
mod sse;
mod stream;
mod sync;
pub mod uplink;
mod ws;
mod wsframe;

pub use auth::{AuthConfig, Verified, Verifier};
pub use boards::BoardSettings;
pub use config::{ClassroomPolicy, GatewayConfig};
pub use courses::{COURSE_MAX_AGE_S, COURSE_SHARED_MAX_AGE_S};
pub use error::AppError;
pub use front::serve;
pub use gateway::Gateway;
pub use limits::Limits;
pub use metrics::{MetricsSection, labelled_counter};
pub use uplink::{UplinkReport, UplinkSource, UplinkState};

pub(crate) use auth::unix_now_s;
pub(crate) use sync::lock;
