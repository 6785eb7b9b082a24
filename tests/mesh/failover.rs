//! Failover (filled in below).
