//! Shared helpers for the test binary live in main.rs; this library is empty.
