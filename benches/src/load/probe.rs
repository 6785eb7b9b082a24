//! The probe every question carries, and what each client keeps of the probes it receives.
//!
//! A question's text starts with a marker `lb:{seq}:{sent_us};`: its sequence number and the
//! moment the sender wrote it, in microseconds since the load generator's epoch. Sender and
//! receivers live in one process, so one monotonic clock serves both and a delivery latency is
//! a subtraction. Receivers find markers by scanning the bytes they read (no JSON parsing),
//! which costs the same for a Socket.IO frame, an SSE event and a floor frame, so the floor is
//! measured the same way as the node. Every client keeps the latency of its first receipt of
//! each sequence number (so deliveries, duplicates and each rate's latencies can be told apart).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What starts every marker.
pub const MARKER_PREFIX: &[u8] = b"lb:";

/// The longest a marker can be (`lb:` + 10 digits + `:` + 20 digits + `;`).
pub const MARKER_LEN_MAX: usize = 3 + 10 + 1 + 20 + 1;

/// The marker of question `seq` sent at `sent_us`.
pub fn marker(seq: u32, sent_us: u64) -> String {
    format!("lb:{seq}:{sent_us};")
}

/// A question text of exactly `len` ASCII characters: the marker, a space, then padding.
pub fn text(seq: u32, sent_us: u64, len: usize) -> String {
    let mut t = marker(seq, sent_us);
    t.push(' ');
    while t.len() < len {
        t.push('x');
    }
    t
}

/// The clock and the counters every client of one phase shares.
pub struct Probe {
    epoch: Instant,
    /// Upper bound on sequence numbers (sizes each client's bitset).
    pub seq_max: u32,
    /// First receipts so far, all clients of this phase together: the orchestrator waits on it.
    pub delivered: AtomicU64,
}

impl Probe {
    /// A probe for sequence numbers below `seq_max`, timed from `epoch`.
    pub fn new(epoch: Instant, seq_max: u32) -> Arc<Probe> {
        Arc::new(Probe {
            epoch,
            seq_max,
            delivered: AtomicU64::new(0),
        })
    }

    /// Microseconds since the epoch.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// What one client received.
#[derive(Debug, Default)]
pub struct Tally {
    /// Latency of the first receipt of each sequence number, in microseconds ([`MISSING`]
    /// where none arrived).
    latencies_us: Vec<u32>,
    /// Receipts of a sequence number already received.
    pub duplicates: u32,
    /// Markers with a sequence number past the probe's bound (a bug if ever non-zero).
    pub out_of_range: u32,
    /// Why the server ended this client's stream before the end of the run, if it did.
    pub cut_off: Option<String>,
    /// Size in bytes of the first qa:new frame this client read (for the floor's frames).
    pub frame_len: Option<usize>,
}

/// The latency slot of a sequence number not received.
const MISSING: u32 = u32::MAX;

impl Tally {
    /// An empty tally for `probe`.
    pub fn new(probe: &Probe) -> Tally {
        Tally {
            latencies_us: vec![MISSING; probe.seq_max as usize],
            ..Tally::default()
        }
    }

    /// Records a receipt of `seq` (sent at `sent_us`) at `now_us`.
    pub fn record(&mut self, probe: &Probe, seq: u32, sent_us: u64, now_us: u64) {
        let Some(slot) = self.latencies_us.get_mut(seq as usize) else {
            self.out_of_range += 1;
            return;
        };
        if *slot != MISSING {
            self.duplicates += 1;
            return;
        }
        // A latency past 71 minutes saturates just below the sentinel.
        *slot = u32::try_from(now_us.saturating_sub(sent_us)).unwrap_or(MISSING - 1);
        probe.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// The latency of `seq` in microseconds, if it was received.
    pub fn latency_us(&self, seq: u32) -> Option<u32> {
        self.latencies_us
            .get(seq as usize)
            .copied()
            .filter(|&l| l != MISSING)
    }
}

/// Calls `found(seq, sent_us)` for every complete marker in `data`; returns how many leading
/// bytes are finished with. The rest (an incomplete marker, or a tail that may begin one)
/// must be kept and put in front of the next read.
pub fn scan(data: &[u8], mut found: impl FnMut(u32, u64)) -> usize {
    let mut i = 0;
    while let Some(p) = find(&data[i..], MARKER_PREFIX) {
        let start = i + p;
        let rest = &data[start + MARKER_PREFIX.len()..];
        match parse_marker_body(rest) {
            Body::Complete { seq, sent_us, len } => {
                found(seq, sent_us);
                i = start + MARKER_PREFIX.len() + len;
            }
            Body::Incomplete => return start,
            Body::Invalid => i = start + MARKER_PREFIX.len(),
        }
    }
    // Keep a tail that could be the start of a marker split across reads.
    let tail = &data[i..];
    if tail.ends_with(b"lb") {
        data.len() - 2
    } else if tail.ends_with(b"l") {
        data.len() - 1
    } else {
        data.len()
    }
}

/// Counts the complete markers in `data` (for frame-size sampling).
pub fn count(data: &[u8]) -> usize {
    let mut n = 0;
    scan(data, |_, _| n += 1);
    n
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

enum Body {
    Complete { seq: u32, sent_us: u64, len: usize },
    Incomplete,
    Invalid,
}

/// Parses `{seq}:{sent_us};` at the start of `b`.
fn parse_marker_body(b: &[u8]) -> Body {
    let Some((seq, after_seq)) = digits(b, b':', 10) else {
        return Body::Invalid;
    };
    let Some(seq) = seq else {
        return Body::Incomplete;
    };
    let rest = &b[after_seq..];
    let Some((us, after_us)) = digits(rest, b';', 20) else {
        return Body::Invalid;
    };
    let Some(us) = us else {
        return Body::Incomplete;
    };
    match (u32::try_from(seq), u64::try_from(us)) {
        (Ok(seq), Ok(sent_us)) => Body::Complete {
            seq,
            sent_us,
            len: after_seq + after_us,
        },
        _ => Body::Invalid,
    }
}

/// Reads 1..=`max` decimal digits then `end`. `None`: not a number; `Some((None, _))`: the data
/// ran out first; `Some((Some(n), len))`: `len` bytes consumed, `end` included.
fn digits(b: &[u8], end: u8, max: usize) -> Option<(Option<u128>, usize)> {
    let mut n: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            if i >= max {
                return None;
            }
            n = n * 10 + u128::from(c - b'0');
        } else if c == end && i > 0 {
            return Some((Some(n), i + 1));
        } else {
            return None;
        }
    }
    Some((None, b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(data: &[u8]) -> (Vec<(u32, u64)>, usize) {
        let mut v = Vec::new();
        let keep = scan(data, |s, t| v.push((s, t)));
        (v, keep)
    }

    #[test]
    fn finds_markers_in_a_frame() {
        let frame = br#"42["qa:new",{"text":"lb:7:123456; xxx","id":"q"},{"token":"t"}]"#;
        assert_eq!(all(frame), (vec![(7, 123_456)], frame.len()));
    }

    #[test]
    fn keeps_a_marker_split_across_reads() {
        let data = b"data: {\"text\":\"lb:12:99";
        let (found, keep) = all(data);
        assert!(found.is_empty());
        assert_eq!(&data[keep..], b"lb:12:99");
        let (found, _) = all(b"lb:12:9988; x");
        assert_eq!(found, vec![(12, 9988)]);
        let (_, keep) = all(b"abc l");
        assert_eq!(keep, 4);
        let (_, keep) = all(b"abc lb");
        assert_eq!(keep, 4);
    }

    #[test]
    fn skips_lookalikes() {
        let (found, keep) = all(b"lb:x lb:1:; lb:2:3; lb:");
        assert_eq!(found, vec![(2, 3)]);
        assert_eq!(keep, 20);
    }

    #[test]
    fn text_has_the_asked_length() {
        let t = text(3, 42, 100);
        assert_eq!(t.len(), 100);
        assert_eq!(all(t.as_bytes()).0, vec![(3, 42)]);
    }

    #[test]
    fn tally_counts_first_receipts_once() {
        let probe = Probe::new(Instant::now(), 100);
        let mut t = Tally::new(&probe);
        t.record(&probe, 5, 10, 30);
        t.record(&probe, 5, 10, 40);
        t.record(&probe, 500, 10, 40);
        assert_eq!(t.latency_us(5), Some(20));
        assert_eq!(t.latency_us(6), None);
        assert_eq!((t.duplicates, t.out_of_range), (1, 1));
        assert_eq!(probe.delivered.load(Ordering::Relaxed), 1);
    }
}
