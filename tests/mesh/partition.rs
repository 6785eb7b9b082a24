//! partition (filled in below).
