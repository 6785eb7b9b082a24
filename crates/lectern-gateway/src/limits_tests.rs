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
