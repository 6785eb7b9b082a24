//! Lectern's cross-crate tests, compiled as ONE test binary (one link on a 2-core machine):
//! one module per area, sharing helpers from `support`.

mod architecture;
mod config;
mod content;
mod deploy;
mod durability;
mod gateway;
mod hub_hostile;
mod mesh;
mod model;
mod netns;
mod node;
mod notify;
mod ops;
mod support;
mod web;
