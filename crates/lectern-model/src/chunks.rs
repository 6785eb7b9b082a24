//! Bounds on the automerge chunks a peer's sync message carries, checked before automerge
//! parses them.
//!
//! automerge 0.12 trusts the run lengths in a chunk's columns: a column of a few bytes can
//! declare a run of billions of rows, and automerge materializes the run while it parses (a
//! 737-byte sync message found by the `hub_sync` fuzz target made a node allocate until the
//! kernel killed it). So before a peer's changes reach automerge, this module walks every chunk
//! in them (change, compressed change, bundle and whole document: the four kinds automerge
//! loads) and counts the rows each column declares without expanding anything. Deflated columns
//! and compressed changes are inflated here, under a byte bound. A message is refused when its
//! chunks declare more rows than [`SYNC_MESSAGE_ROWS_MAX`], inflate past
//! [`SYNC_MESSAGE_INFLATED_BYTES_MAX`], or do not parse. The walk is linear in the bytes.
//!
//! The layouts, read from automerge's storage format (`u` an unsigned and `s` a signed
//! LEB128 number):
//! - a chunk: the magic bytes `85 6f 4a 83`, a 4-byte checksum, a type byte (0 document,
//!   1 change, 2 compressed change, 3 bundle), a `u` length, then that many bytes;
//! - columns: a `u` count, then per column a `u` spec (id << 4, 8 if deflated, the encoding
//!   0..=7) and a `u` length; their bytes follow back to back;
//! - a change: dependencies (`u` n, n 32-byte hashes), its actor (`u` length, bytes), `u` seq,
//!   `u` start op, `s` time, its message (`u` length, bytes), other actors (`u` n, each a `u`
//!   length and bytes), its op columns (never deflated), their bytes, then extra bytes;
//! - a compressed change: the bytes of a change after its header, deflated;
//! - a bundle: dependencies, actors, change columns and their bytes, op columns and their bytes;
//! - a document: actors, heads (`u` n, n 32-byte hashes), change columns, op columns, the change
//!   columns' bytes, the op columns' bytes, then a `u` per head;
//! - encodings: run-length for groups, actors, integers, deltas, strings and value metadata (an
//!   `s` n, then one value standing for n rows if n > 0, -n values if n < 0, or a `u` count of
//!   null rows if n is 0); booleans as `u` counts of alternating false and true runs; values as
//!   raw bytes, whose lengths the value metadata column of the same id gives (length << 4 | type).

use std::borrow::Cow;
use std::io::Read;

/// Most rows the chunks of one peer sync message may declare: for each chunk, its widest column
/// of changes plus its widest column of operations, summed over the message. A session at every
/// per-session cap of [`crate::limits`] holds well under a million operations, so a whole
/// document sent at once fits four times over; a message past it is refused before automerge
/// parses it.
pub const SYNC_MESSAGE_ROWS_MAX: u64 = 1 << 22;

/// Most bytes the deflated columns and compressed changes of one peer sync message may inflate
/// to, in all. Deflate expands up to about a thousand times, so without a bound one frame of
/// the mesh's 16 MiB could ask for gigabytes.
pub const SYNC_MESSAGE_INFLATED_BYTES_MAX: u64 = 64 << 20;

/// The first four bytes of every automerge chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Length of a change hash.
const HASH_BYTES: u64 = 32;
/// The spec bit of a deflated column.
const DEFLATED: u32 = 0b1000;

/// A refusal: why a peer's chunks do not reach automerge.
type Check<T> = Result<T, &'static str>;

/// Why the chunks of a peer's sync message (`message.changes`) are refused, if they are.
pub(crate) fn changes_refused<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Option<&'static str> {
    let mut budget = Budget {
        rows_left: SYNC_MESSAGE_ROWS_MAX,
        inflated_left: SYNC_MESSAGE_INFLATED_BYTES_MAX,
    };
    for entry in chunks {
        // automerge loads an entry as chunks back to back.
        let mut r = Reader(entry);
        while !r.0.is_empty() {
            if let Err(why) = chunk(&mut r, &mut budget) {
                return Some(why);
            }
        }
    }
    None
}

/// What is left of a message's bounds.
struct Budget {
    rows_left: u64,
    inflated_left: u64,
}

impl Budget {
    fn spend_rows(&mut self, rows: u64) -> Check<()> {
        self.rows_left = self
            .rows_left
            .checked_sub(rows)
            .ok_or("changes declaring more rows than a sync message may hold")?;
        Ok(())
    }

    /// `deflated` inflated, within what is left of the bound.
    fn inflate(&mut self, deflated: &[u8]) -> Check<Vec<u8>> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(deflated)
            .take(self.inflated_left.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|_| "deflated bytes that do not inflate")?;
        self.inflated_left = self
            .inflated_left
            .checked_sub(out.len() as u64)
            .ok_or("deflated bytes that inflate past what a sync message may hold")?;
        Ok(out)
    }
}

/// One chunk off the front of `r`.
fn chunk(r: &mut Reader<'_>, budget: &mut Budget) -> Check<()> {
    if r.take(MAGIC.len() as u64)? != MAGIC {
        return Err("a chunk without automerge's magic bytes");
    }
    r.take(4)?; // the checksum, which automerge verifies
    let kind = r.take(1)?[0];
    let len = r.u()?;
    let body = r.take(len)?;
    match kind {
        0 => document(body, budget),
        1 => change(body, budget),
        2 => {
            let inflated = budget.inflate(body)?;
            change(&inflated, budget)
        }
        3 => bundle(body, budget),
        _ => Err("a chunk of an unknown type"),
    }
}

fn change(body: &[u8], budget: &mut Budget) -> Check<()> {
    let mut r = Reader(body);
    r.hashes()?;
    r.bytes()?; // actor
    r.u()?; // seq
    r.u()?; // start op
    r.s()?; // time
    r.bytes()?; // message
    r.actors()?;
    let ops = r.columns()?;
    if ops.iter().any(|c| c.spec & DEFLATED != 0) {
        return Err("a change with deflated columns");
    }
    let data = r.take(total_len(&ops)?)?;
    // Extra bytes may follow; automerge keeps them as they are.
    count_rows(&ops, data, budget)
}

fn bundle(body: &[u8], budget: &mut Budget) -> Check<()> {
    let mut r = Reader(body);
    r.hashes()?;
    r.actors()?;
    let changes = r.columns()?;
    let changes_data = r.take(total_len(&changes)?)?;
    let ops = r.columns()?;
    let ops_data = r.take(total_len(&ops)?)?;
    // automerge ignores bytes after the op columns.
    count_rows(&changes, changes_data, budget)?;
    count_rows(&ops, ops_data, budget)
}

fn document(body: &[u8], budget: &mut Budget) -> Check<()> {
    let mut r = Reader(body);
    r.actors()?;
    r.hashes()?;
    let changes = r.columns()?;
    let ops = r.columns()?;
    let changes_data = r.take(total_len(&changes)?)?;
    let ops_data = r.take(total_len(&ops)?)?;
    // The head indices follow; they are a few numbers automerge checks itself.
    count_rows(&changes, changes_data, budget)?;
    count_rows(&ops, ops_data, budget)
}

/// One column's spec and length, as a chunk declares them.
struct Column {
    spec: u32,
    len: u64,
}

impl Column {
    fn id(&self) -> u32 {
        self.spec >> 4
    }

    fn encoding(&self) -> u32 {
        self.spec & 0b111
    }
}

/// The column encodings whose rows are counted (automerge's `ColumnType`).
const GROUP: u32 = 0;
const DELTA: u32 = 3;
const BOOLEAN: u32 = 4;
const STRING: u32 = 5;
const VALUE_METADATA: u32 = 6;
const VALUE: u32 = 7;

fn total_len(columns: &[Column]) -> Check<u64> {
    columns
        .iter()
        .try_fold(0u64, |sum, c| sum.checked_add(c.len))
        .ok_or("columns longer than any chunk")
}

/// Counts the rows of `columns` (whose bytes are `data`) against the budget: the widest column
/// is what automerge expands. Groups may not stand for more rows than are left either, and the
/// value lengths of a metadata column may not run past its value column.
fn count_rows(columns: &[Column], data: &[u8], budget: &mut Budget) -> Check<()> {
    let mut r = Reader(data);
    let mut bytes: Vec<Cow<'_, [u8]>> = Vec::with_capacity(columns.len());
    for c in columns {
        let raw = r.take(c.len)?;
        bytes.push(if c.spec & DEFLATED != 0 {
            Cow::Owned(budget.inflate(raw)?)
        } else {
            Cow::Borrowed(raw)
        });
    }
    let mut widest = 0u64;
    for (c, b) in columns.iter().zip(&bytes) {
        let counted = rows(c.encoding(), b, budget.rows_left)?;
        widest = widest.max(counted.rows);
        match c.encoding() {
            GROUP if counted.sum > budget.rows_left => {
                return Err("a group standing for more rows than a sync message may hold");
            }
            VALUE_METADATA => {
                let values = columns
                    .iter()
                    .zip(&bytes)
                    .find(|(v, _)| v.encoding() == VALUE && v.id() == c.id())
                    .map_or(0, |(_, b)| b.len() as u64);
                if counted.sum > values {
                    return Err("value lengths running past their column");
                }
            }
            _ => {}
        }
    }
    budget.spend_rows(widest)
}

/// What one column declares: its rows, and the sum of its values where they mean something (a
/// group's sizes, the value lengths of value metadata).
struct Counted {
    rows: u64,
    sum: u64,
}

fn rows(encoding: u32, bytes: &[u8], rows_max: u64) -> Check<Counted> {
    const TOO_MANY: &str = "changes declaring more rows than a sync message may hold";
    let mut r = Reader(bytes);
    let mut counted = Counted { rows: 0, sum: 0 };
    match encoding {
        VALUE => {}
        BOOLEAN => {
            while !r.0.is_empty() {
                counted.rows = counted.rows.saturating_add(r.u()?);
                if counted.rows > rows_max {
                    return Err(TOO_MANY);
                }
            }
        }
        _ => {
            while !r.0.is_empty() {
                let n = r.s()?;
                if n > 0 {
                    let v = r.value(encoding)?;
                    counted.rows = counted.rows.saturating_add(n.unsigned_abs());
                    counted.sum = counted
                        .sum
                        .saturating_add(v.saturating_mul(n.unsigned_abs()));
                } else if n < 0 {
                    let k = n.unsigned_abs();
                    // Every literal takes at least one byte: a longer run is a lie.
                    if k > r.0.len() as u64 {
                        return Err("a literal run longer than its bytes");
                    }
                    for _ in 0..k {
                        counted.sum = counted.sum.saturating_add(r.value(encoding)?);
                    }
                    counted.rows = counted.rows.saturating_add(k);
                } else {
                    counted.rows = counted.rows.saturating_add(r.u()?);
                }
                if counted.rows > rows_max {
                    return Err(TOO_MANY);
                }
            }
        }
    }
    Ok(counted)
}

/// A cursor over a peer's bytes; every read fails cleanly at the end. The model reads the
/// rest of a peer's sync message (its bloom filters) with it too.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    const SHORT: &'static str = "a chunk shorter than it declares";

    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: u64) -> Check<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| Self::SHORT)?;
        if n > self.0.len() {
            return Err(Self::SHORT);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// An unsigned LEB128 number (at most ten bytes).
    pub(crate) fn u(&mut self) -> Check<u64> {
        let mut value = 0u64;
        for (i, b) in self.0.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f).checked_shl(7 * i as u32).unwrap_or(0);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err("a number that does not end")
    }

    /// A signed LEB128 number (at most ten bytes).
    fn s(&mut self) -> Check<i64> {
        let mut value = 0i64;
        for (i, b) in self.0.iter().enumerate().take(10) {
            let shift = 7 * i as u32;
            value |= i64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                if b & 0x40 != 0 && shift + 7 < 64 {
                    value |= -1i64 << (shift + 7);
                }
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err("a number that does not end")
    }

    /// A length-prefixed run of bytes (an actor id, a message, a string value).
    fn bytes(&mut self) -> Check<&'a [u8]> {
        let len = self.u()?;
        self.take(len)
    }

    /// A count of change hashes and the hashes.
    fn hashes(&mut self) -> Check<()> {
        let n = self.u()?;
        self.take(n.checked_mul(HASH_BYTES).ok_or(Self::SHORT)?)?;
        Ok(())
    }

    /// A count of actor ids and the ids.
    fn actors(&mut self) -> Check<()> {
        let n = self.u()?;
        // Every actor takes at least its length byte.
        if n > self.0.len() as u64 {
            return Err(Self::SHORT);
        }
        for _ in 0..n {
            self.bytes()?;
        }
        Ok(())
    }

    /// A list of column specs and lengths.
    fn columns(&mut self) -> Check<Vec<Column>> {
        let n = self.u()?;
        // Every column takes at least two bytes.
        if n > self.0.len() as u64 / 2 {
            return Err(Self::SHORT);
        }
        (0..n)
            .map(|_| {
                let spec = u32::try_from(self.u()?).map_err(|_| "a column spec past 32 bits")?;
                Ok(Column {
                    spec,
                    len: self.u()?,
                })
            })
            .collect()
    }

    /// One value of a run-length column, and what it counts for a group (its size) or value
    /// metadata (the value's length); 0 for the rest.
    fn value(&mut self, encoding: u32) -> Check<u64> {
        match encoding {
            DELTA => self.s().map(|_| 0),
            STRING => self.bytes().map(|_| 0),
            GROUP => self.u(),
            VALUE_METADATA => self.u().map(|meta| meta >> 4),
            _ => self.u().map(|_| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::{self, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    /// A document with `n` changes of a few keys and texts each, so that its columns are long
    /// enough for automerge to deflate them when it saves or bundles.
    fn document(n: usize) -> AutoCommit {
        let mut doc = AutoCommit::new();
        let list = doc
            .put_object(ROOT, "items", automerge::ObjType::List)
            .expect("a list");
        for i in 0..n {
            doc.put(ROOT, format!("key{}", i % 7), i as i64)
                .expect("put");
            doc.insert(&list, i, format!("item number {i} of the list"))
                .expect("insert");
            if i % 5 == 4 {
                doc.delete(&list, i - 2).expect("delete");
                doc.insert(&list, i - 2, true).expect("insert");
            }
            doc.commit();
        }
        doc
    }

    /// Every message of a full sync from `from` to a fresh peer, in the sync protocol version
    /// both ends agree on.
    fn messages(from: &mut AutoCommit) -> Vec<sync::Message> {
        let mut to = AutoCommit::new();
        let (mut a, mut b) = (sync::State::new(), sync::State::new());
        let mut seen = Vec::new();
        for _ in 0..10 {
            let mut moved = false;
            if let Some(m) = from.sync().generate_sync_message(&mut a) {
                seen.push(m.clone());
                to.sync().receive_sync_message(&mut b, m).expect("applies");
                moved = true;
            }
            if let Some(m) = to.sync().generate_sync_message(&mut b) {
                from.sync()
                    .receive_sync_message(&mut a, m)
                    .expect("applies");
                moved = true;
            }
            if !moved {
                break;
            }
        }
        assert_eq!(from.get_heads(), to.get_heads(), "the sync converged");
        seen
    }

    fn refused(m: &sync::Message) -> Option<&'static str> {
        changes_refused(m.changes.iter())
    }

    #[test]
    fn honest_changes_bundles_and_documents_pass() {
        let mut doc = document(400);
        // A fresh peer gets the whole document (version 2) ...
        let sent = messages(&mut doc);
        assert!(
            sent.iter().any(|m| !m.changes.is_empty()),
            "changes were sent"
        );
        for m in &sent {
            assert_eq!(refused(m), None);
        }
        // ... a peer that has part of it gets the rest as a bundle or as changes.
        let mut peer = doc.fork();
        document_more(&mut doc, 50);
        let mut s = (sync::State::new(), sync::State::new());
        let mut carried = 0;
        for _ in 0..10 {
            if let Some(m) = doc.sync().generate_sync_message(&mut s.0) {
                assert_eq!(refused(&m), None);
                carried += m.changes.len();
                peer.sync()
                    .receive_sync_message(&mut s.1, m)
                    .expect("applies");
            }
            if let Some(m) = peer.sync().generate_sync_message(&mut s.1) {
                assert_eq!(refused(&m), None);
                doc.sync()
                    .receive_sync_message(&mut s.0, m)
                    .expect("applies");
            }
        }
        assert!(carried > 0, "the new changes travelled");
        assert_eq!(doc.get_heads(), peer.get_heads());
        // Every kind of chunk, as automerge writes it: a saved (deflated) document, each change
        // as it is stored (compressed when long) and raw.
        let saved = doc.save();
        assert!(
            deflates_a_column(&saved),
            "the saved document deflates a column"
        );
        assert_eq!(changes_refused([saved.as_slice()]), None);
        // One long change, which automerge stores compressed (chunk type 2).
        for i in 0..300 {
            doc.put(ROOT, format!("bulk{i}"), format!("one of many values {i}"))
                .expect("put");
        }
        doc.commit();
        let mut kinds = std::collections::BTreeSet::new();
        for mut c in doc.get_changes(&[]) {
            assert_eq!(changes_refused([c.raw_bytes()]), None);
            let stored = c.bytes();
            kinds.insert(stored[8]);
            assert_eq!(changes_refused([stored.as_ref()]), None);
        }
        assert!(
            kinds.contains(&2),
            "a change was stored compressed: {kinds:?}"
        );
        // A bundle of every change (automerge loads bundles; its sync does not send them yet).
        let hashes: Vec<_> = doc.get_changes(&[]).iter().map(|c| c.hash()).collect();
        let bundle = doc.document().bundle(hashes).expect("a bundle");
        let bundle = bundle.bytes();
        assert_eq!(bundle[8], 3, "a bundle chunk");
        assert_eq!(changes_refused([bundle]), None);
    }

    /// Whether the document chunk `saved` has a deflated column.
    fn deflates_a_column(saved: &[u8]) -> bool {
        let mut r = Reader(saved);
        r.take(9).expect("a header");
        r.u().expect("a length");
        r.actors().expect("actors");
        r.hashes().expect("heads");
        let changes = r.columns().expect("change columns");
        let ops = r.columns().expect("op columns");
        changes.iter().chain(&ops).any(|c| c.spec & DEFLATED != 0)
    }

    fn document_more(doc: &mut AutoCommit, n: usize) {
        for i in 0..n {
            doc.put(ROOT, format!("later{i}"), format!("a later value {i}"))
                .expect("put");
            doc.commit();
        }
    }

    /// The sync message the `hub_sync` fuzz target found (`fuzz/corpus/hub_sync/timeout-48404da6…`
    /// less its first byte): a bundle whose columns declare runs of billions of rows in 618 bytes.
    /// automerge 0.12 alone allocated 24 GB on it before the kernel killed the process.
    const RUN_BOMB: &[u8] = include_bytes!("../testdata/run-bomb.sync");

    #[test]
    fn a_bundle_declaring_billions_of_rows_is_refused_before_automerge_sees_it() {
        let m = sync::Message::decode(RUN_BOMB).expect("decodes: its changes are parsed later");
        assert_eq!(
            refused(&m),
            Some("changes declaring more rows than a sync message may hold")
        );
    }

    /// A chunk of `kind` around `body`, with a checksum automerge would refuse (this module
    /// leaves it to automerge).
    fn chunk_of(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut chunk = MAGIC.to_vec();
        chunk.extend([0; 4]);
        chunk.push(kind);
        leb(&mut chunk, body.len() as u64);
        chunk.extend(body);
        chunk
    }

    /// A change of one actor whose one integer column is `column`.
    fn change_with_column(column: &[u8]) -> Vec<u8> {
        // No deps, actor `01`, seq 1, start op 1, time 0, no message, no other actors.
        let mut body = vec![0, 1, 1, 1, 1, 0, 0, 0];
        // One column: id 4, an integer (run-length) column.
        body.push(1);
        leb(&mut body, (4 << 4) | 2);
        leb(&mut body, column.len() as u64);
        body.extend(column);
        chunk_of(1, &body)
    }

    #[test]
    fn a_change_declaring_a_long_run_is_refused() {
        // A run of three rows of the value 1, then a run of 2^40 rows (a signed LEB128 count).
        assert_eq!(
            changes_refused([change_with_column(&[3, 1]).as_slice()]),
            None
        );
        let long = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x01];
        assert_eq!(
            changes_refused([change_with_column(&long).as_slice()]),
            Some("changes declaring more rows than a sync message may hold")
        );
        // Null runs count as rows too.
        let nulls = [0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
        assert_eq!(
            changes_refused([change_with_column(&nulls).as_slice()]),
            Some("changes declaring more rows than a sync message may hold")
        );
        // So do many small changes of one message.
        let big = {
            let mut c = vec![];
            leb_signed(&mut c, (SYNC_MESSAGE_ROWS_MAX / 2) as i64);
            c.push(1);
            change_with_column(&c)
        };
        assert_eq!(changes_refused([big.as_slice(), big.as_slice()]), None);
        assert_eq!(
            changes_refused([big.as_slice(), big.as_slice(), big.as_slice()]),
            Some("changes declaring more rows than a sync message may hold")
        );
    }

    fn leb_signed(out: &mut Vec<u8>, mut v: i64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0) {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn leb(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn a_compressed_change_inflating_past_the_bound_is_refused() {
        use std::io::Write;
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(SYNC_MESSAGE_INFLATED_BYTES_MAX >> 20) + 1 {
            z.write_all(&zeros).expect("deflates");
        }
        let deflated = z.finish().expect("deflates");
        assert_eq!(
            changes_refused([chunk_of(2, &deflated).as_slice()]),
            Some("deflated bytes that inflate past what a sync message may hold")
        );
    }

    #[test]
    fn chunks_that_lie_about_their_lengths_are_refused() {
        let mut lying = MAGIC.to_vec();
        lying.extend([0; 4]);
        lying.push(1);
        leb(&mut lying, 1 << 40);
        assert_eq!(changes_refused([lying.as_slice()]), Some(Reader::SHORT));
        assert_eq!(
            changes_refused([&[0u8; 12][..]]),
            Some("a chunk without automerge's magic bytes")
        );
        // A literal run of a million values in three bytes.
        assert_eq!(
            rows(GROUP, &[0xc0, 0xbb, 0x78], u64::MAX).err(),
            Some("a literal run longer than its bytes")
        );
    }
}
