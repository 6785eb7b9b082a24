//! Gateway tests.

mod auth;
