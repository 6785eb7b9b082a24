//! hostile (filled in below).
