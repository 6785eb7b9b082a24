//! Unit tests of the token buckets and connection caps, with time stepped exactly through
//! `Limiter::command_at` (no sleeping, no dependence on the machine's speed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Limiter, Limits};

fn limiter(commands_per_s: f64, command_burst: u32) -> Limiter {
    Limiter::new(Limits {
        commands_per_s,
        command_burst,
        ..Limits::default()
    })
}

fn refused(limiter: &Limiter, user: &str, at: Instant) -> bool {
    match limiter.command_at(user, at) {
        Ok(()) => false,
        Err(e) => {
            assert_eq!(e.code, "rate_limited");
            true
        }
    }
}

/// A bucket refilled to exactly one token lets exactly one command through, and half a token
/// lets none.
///
/// Kills: `tokens < 1.0` changed to `tokens <= 1.0` (the command at exactly one token would be
/// refused), and a refill computed from the wrong rate or never applied.
#[test]
fn exactly_one_token_is_enough_and_half_a_token_is_not() {
    let l = limiter(1.0, 2);
    let t0 = Instant::now();
    assert!(!refused(&l, "u", t0));
    assert!(!refused(&l, "u", t0));
    assert!(refused(&l, "u", t0), "a third command in a burst of 2");
    assert!(
        refused(&l, "u", t0 + Duration::from_millis(500)),
        "half a token is not enough"
    );
    // 1 s after t0 at 1/s: the refused attempt at 0.5 s left 0.5 tokens, plus 0.5 = exactly 1.
    assert!(
        !refused(&l, "u", t0 + Duration::from_secs(1)),
        "exactly one token is enough"
    );
    assert!(
        refused(&l, "u", t0 + Duration::from_secs(1)),
        "and it is spent"
    );
}

/// Tokens refill at `commands_per_s`: after a burst is spent, one second at 10/s gives 10
/// more commands, not 9 and not 11.
///
/// Kills: a refill at the wrong rate, or a spend of other than one token per command.
#[test]
fn tokens_refill_at_the_configured_rate() {
    let l = limiter(10.0, 20);
    let t0 = Instant::now();
    for _ in 0..20 {
        assert!(!refused(&l, "u", t0));
    }
    assert!(refused(&l, "u", t0));
    let t1 = t0 + Duration::from_secs(1);
    let allowed = (0..30).filter(|_| !refused(&l, "u", t1)).count();
    assert_eq!(allowed, 10);
}

/// However long a user was idle, the bucket holds at most `command_burst` tokens.
///
/// Kills: removing the cap at `burst` (`.min(command_burst)`).
#[test]
fn an_idle_bucket_is_capped_at_the_burst() {
    let l = limiter(10.0, 5);
    let t0 = Instant::now();
    assert!(!refused(&l, "u", t0));
    let later = t0 + Duration::from_secs(3600);
    let allowed = (0..100).filter(|_| !refused(&l, "u", later)).count();
    assert_eq!(allowed, 5);
}

/// Buckets are per user: one user's spent bucket does not refuse another.
///
/// Kills: a bucket keyed by anything but the user.
#[test]
fn buckets_are_per_user() {
    let l = limiter(1.0, 1);
    let t0 = Instant::now();
    assert!(!refused(&l, "a", t0));
    assert!(refused(&l, "a", t0));
    assert!(!refused(&l, "b", t0));
}

/// Past `conns_per_user_max` a user's next connection is refused with `too_many_connections`
/// while other users still connect; dropping a slot frees it; the node-wide cap holds across
/// users and is freed the same way.
///
/// Kills: `>=` changed to `>` in either cap, and a slot not released on drop.
#[test]
fn connection_caps_per_user_and_per_node() {
    let l = Arc::new(Limiter::new(Limits {
        conns_per_user_max: 2,
        conns_max: 3,
        ..Limits::default()
    }));
    let a1 = l.connect("a").expect("a 1");
    let _a2 = l.connect("a").expect("a 2");
    let e = l
        .connect("a")
        .err()
        .expect("a's third connection is refused");
    assert_eq!(e.code, "too_many_connections");
    let _b1 = l.connect("b").expect("b 1");
    assert_eq!(l.connections(), 3);
    let e = l.connect("c").err().expect("the node is full");
    assert_eq!(e.code, "too_many_connections");
    assert_eq!(l.connections(), 3, "a refused connection is not counted");
    drop(a1);
    assert_eq!(l.connections(), 2);
    let _c1 = l.connect("c").expect("a freed slot is usable");
    let e = l.connect("a").err().expect("the node is full again");
    assert_eq!(e.code, "too_many_connections");
}

/// `limits()` hands back the limits the limiter was built with (the transports read the
/// payload cap and queue sizes from it).
///
/// Kills: `Limiter::limits` returning `Limits::default()`.
#[test]
fn the_limiter_reports_its_configured_limits() {
    let l = limiter(3.0, 7);
    assert_eq!(l.limits().command_burst, 7);
    assert_eq!(l.limits().commands_per_s, 3.0);
}

/// `command` (the real clock) spends tokens like `command_at`: with a burst of 1 and a refill
/// of one token per 1,000 s, the second command is refused.
///
/// Kills: `Limiter::command` always answering `Ok(())`.
#[test]
fn the_real_clock_entry_point_spends_tokens() {
    let l = limiter(0.001, 1);
    assert!(l.command("u").is_ok());
    let e = l.command("u").expect_err("the burst of 1 is spent");
    assert_eq!(e.code, "rate_limited");
}

/// Past `BUCKETS_PRUNE_ABOVE_COUNT` buckets (100 here, so that a mutant pruning on every call
/// stays fast), the table drops the full ones (a fresh bucket would
/// be the same) and keeps every partly spent one; at exactly the threshold it prunes nothing.
/// Buckets that refill to exactly the burst count as full.
///
/// Kills: the threshold's `>` changed to `==`, `<` or `>=`; the prune condition's `<` changed
/// to `<=`, `==` or `>`; its `+` or `*` changed (the rate 2/s and half-second step make `*`
/// and `/` differ).
#[test]
fn the_bucket_table_prunes_full_buckets_only_above_its_threshold() {
    const BUCKETS_PRUNE_ABOVE_COUNT: usize = 100;
    let mut l = limiter(2.0, 2);
    l.buckets_prune_above_count = BUCKETS_PRUNE_ABOVE_COUNT;
    let t0 = Instant::now();
    let buckets = |l: &Limiter| l.buckets.lock().unwrap().len();
    // "busy" spends its whole burst; the others one token each.
    assert!(!refused(&l, "busy", t0));
    assert!(!refused(&l, "busy", t0));
    for i in 1..BUCKETS_PRUNE_ABOVE_COUNT {
        assert!(!refused(&l, &format!("u{i}"), t0));
    }
    assert_eq!(buckets(&l), BUCKETS_PRUNE_ABOVE_COUNT);
    // Half a second at 2/s: every "u" bucket is back to exactly 2 (full), "busy" holds 1.
    let t1 = t0 + Duration::from_millis(500);
    assert!(!refused(&l, "u1", t1));
    assert_eq!(
        buckets(&l),
        BUCKETS_PRUNE_ABOVE_COUNT,
        "no prune at exactly the threshold"
    );
    assert!(!refused(&l, "new", t1));
    assert_eq!(buckets(&l), BUCKETS_PRUNE_ABOVE_COUNT + 1);
    // Above the threshold: the full "u" buckets go; "busy", "u1" and "new" (spent) stay.
    assert!(!refused(&l, "new2", t1));
    assert_eq!(buckets(&l), 4, "busy, u1, new and new2 are kept");
    // "busy" kept its state: one token, not a fresh burst of two.
    assert!(!refused(&l, "busy", t1));
    assert!(refused(&l, "busy", t1));
}

/// Releasing a connection frees exactly one of the user's slots, and the user's count is kept
/// while other connections of theirs are open.
///
/// Kills: `*n -= 1` changed to `+=` or `/=` in `release`, and `*n == 0` changed to `!=` (the
/// count forgotten while connections are still open).
#[test]
fn releasing_a_connection_frees_exactly_one_slot_of_its_user() {
    let l = Arc::new(Limiter::new(Limits {
        conns_per_user_max: 2,
        conns_max: 100,
        ..Limits::default()
    }));
    let a1 = l.connect("a").expect("a 1");
    let _a2 = l.connect("a").expect("a 2");
    drop(a1);
    let _a3 = l.connect("a").expect("the released slot is usable");
    let e = l.connect("a").err().expect("a holds two connections again");
    assert_eq!(e.code, "too_many_connections");
}
