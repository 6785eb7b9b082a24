//! Defensive reads of a document, now or as of some heads.
//!
//! Documents arrive from peers, and a hostile or buggy peer can write anything: a string where a
//! map belongs, a missing field. Every read here returns an `Option` and the callers skip what
//! does not fit the schema; nothing read from a document can panic the node.

use automerge::ObjId;
use automerge::{ChangeHash, ObjType, ROOT, ReadDoc, ScalarValueRef, Value, ValueRef};

/// Reads `doc` as of `heads` (or as it is now when `heads` is `None`).
pub(crate) struct Reader<'a, D: ReadDoc> {
    doc: &'a D,
    heads: Option<&'a [ChangeHash]>,
}

impl<'a, D: ReadDoc> Reader<'a, D> {
    /// Reads the current state.
    pub(crate) fn now(doc: &'a D) -> Self {
        Reader { doc, heads: None }
    }

    /// Reads the state as of `heads`.
    pub(crate) fn at(doc: &'a D, heads: &'a [ChangeHash]) -> Self {
        Reader {
            doc,
            heads: Some(heads),
        }
    }

    fn get(&self, obj: &ObjId, key: &str) -> Option<(Value<'a>, ObjId)> {
        let got = match self.heads {
            Some(heads) => self.doc.get_at(obj, key, heads),
            None => self.doc.get(obj, key),
        };
        got.ok().flatten()
    }

    /// The map stored at `obj[key]`.
    pub(crate) fn map(&self, obj: &ObjId, key: &str) -> Option<ObjId> {
        match self.get(obj, key)? {
            (Value::Object(ObjType::Map), id) => Some(id),
            _ => None,
        }
    }

    /// A top-level map.
    pub(crate) fn root_map(&self, key: &str) -> Option<ObjId> {
        self.map(&ROOT, key)
    }

    /// Every conflicting map stored at `obj[key]` (concurrent creations of the same key).
    pub(crate) fn all_maps(&self, obj: &ObjId, key: &str) -> Vec<ObjId> {
        let all = match self.heads {
            Some(heads) => self.doc.get_all_at(obj, key, heads),
            None => self.doc.get_all(obj, key),
        };
        all.unwrap_or_default()
            .into_iter()
            .filter_map(|(v, id)| matches!(v, Value::Object(ObjType::Map)).then_some(id))
            .collect()
    }

    /// Every copy of the map at `obj[key]`: the one that reads (automerge's winner) first,
    /// then those created concurrently with it (two nodes that applied one `qa.ask` before
    /// they met). Nearly always one.
    pub(crate) fn copies(&self, obj: &ObjId, key: &str) -> Vec<ObjId> {
        let Some(winner) = self.map(obj, key) else {
            return Vec::new();
        };
        let all = self.all_maps(obj, key);
        if all.len() < 2 {
            return vec![winner];
        }
        let others = all.into_iter().filter(|copy| *copy != winner);
        std::iter::once(winner.clone()).chain(others).collect()
    }

    /// Of several copies of one map (concurrent creations of one key, see
    /// [`Reader::all_maps`]), the one whose `key` was written last in automerge's order of
    /// operations (a Lamport clock: a write made after seeing another sorts after it, and
    /// concurrent writes sort by actor, the same on every replica). Reading each field from
    /// the copy this names makes the copies read as one map, each field its last write in any
    /// copy, as if they had been one map all along. `None` if no copy holds `key`.
    pub(crate) fn latest<'c>(&self, copies: &'c [ObjId], key: &str) -> Option<&'c ObjId> {
        copies
            .iter()
            .filter_map(|copy| Some((self.get(copy, key)?.1, copy)))
            .max_by(|(a, _), (b, _)| a.cmp(b))
            .map(|(_, copy)| copy)
    }

    /// A string at `obj[key]`.
    pub(crate) fn str(&self, obj: &ObjId, key: &str) -> Option<String> {
        match self.get(obj, key)? {
            (Value::Scalar(s), _) => s.as_str().map(str::to_owned),
            _ => None,
        }
    }

    /// An integer at `obj[key]` (any numeric scalar, as automerge coerces it).
    pub(crate) fn int(&self, obj: &ObjId, key: &str) -> Option<i64> {
        match self.get(obj, key)? {
            (Value::Scalar(s), _) => s.as_i64(),
            _ => None,
        }
    }

    /// A boolean at `obj[key]`.
    pub(crate) fn bool(&self, obj: &ObjId, key: &str) -> Option<bool> {
        match self.get(obj, key)? {
            (Value::Scalar(s), _) => s.as_bool(),
            _ => None,
        }
    }

    /// The keys of a map, sorted.
    pub(crate) fn keys(&self, obj: &ObjId) -> Vec<String> {
        match self.heads {
            Some(heads) => self.doc.keys_at(obj, heads).collect(),
            None => self.doc.keys(obj).collect(),
        }
    }

    /// `(key, value)` for every string value of a map, sorted by key, in one pass (a `keys`
    /// then `get` per key costs a lookup per entry; a hot poll has thousands).
    pub(crate) fn str_entries(&self, obj: &ObjId) -> Vec<(String, String)> {
        self.range(obj, ..)
            .filter_map(|item| match item.value {
                ValueRef::Scalar(ScalarValueRef::Str(s)) => {
                    Some((item.key.into_owned(), s.to_string()))
                }
                _ => None,
            })
            .collect()
    }

    /// The boolean values of a map (a voters map), by key.
    pub(crate) fn bools(&self, obj: &ObjId) -> Vec<(String, bool)> {
        self.range(obj, ..)
            .filter_map(|item| match item.value {
                ValueRef::Scalar(ScalarValueRef::Boolean(b)) => Some((item.key.into_owned(), b)),
                _ => None,
            })
            .collect()
    }

    /// The number of `true` values in a map (a voters map), in one pass.
    pub(crate) fn count_true(&self, obj: &ObjId) -> usize {
        self.range(obj, ..)
            .filter(|item| matches!(item.value, ValueRef::Scalar(ScalarValueRef::Boolean(true))))
            .count()
    }

    /// The keys of a map that start with `prefix/` (ids never contain `/`), in one range scan.
    pub(crate) fn keys_under(&self, obj: &ObjId, prefix: &str) -> Vec<String> {
        // '0' is the character after '/', so this range is exactly the keys `prefix/…`.
        self.range(obj, format!("{prefix}/")..format!("{prefix}0"))
            .map(|item| item.key.into_owned())
            .collect()
    }

    fn range<'b, R: std::ops::RangeBounds<String> + 'b>(
        &'b self,
        obj: &ObjId,
        range: R,
    ) -> automerge::iter::MapRange<'b> {
        match self.heads {
            Some(heads) => self.doc.map_range_at(obj, range, heads),
            None => self.doc.map_range(obj, range),
        }
    }
}
