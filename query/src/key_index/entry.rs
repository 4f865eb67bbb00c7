//! How the key index stores one record: its place in the key's history
//! (timestamp, offset) first, so that deciding whether a record is newer
//! reads 16 bytes, then the record itself, so that a lookup answers without
//! touching either tier.
//!
//! Layout (little-endian): `timestamp i64 | offset u64 | value_len u32 |
//! value | header_count u16 | (name_len u16 | name | value_len u32 | value)*`.

/// A key's latest record as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub timestamp: i64,
    pub offset: u64,
    /// The record's JSON text (`null` for a tombstone).
    pub value: String,
    pub headers: Vec<(String, String)>,
    /// The record is too large for the entry format: only its place is
    /// kept, and a lookup that finds it scans.
    pub unindexed: bool,
}

/// The value length that marks an entry [`Entry::unindexed`].
const UNINDEXED: u32 = u32::MAX;

impl Entry {
    /// Whether the record is a tombstone (its key is deleted).
    pub fn is_tombstone(&self) -> bool {
        self.value == "null"
    }

    /// Whether this record comes after `(timestamp, offset)` in its key's
    /// history of one partition: latest by timestamp, ties by offset (the
    /// snapshot's order).
    pub fn is_after(&self, timestamp: i64, offset: u64) -> bool {
        (self.timestamp, self.offset) > (timestamp, offset)
    }
}

/// Appends the stored form of a record to `out`; `None` when a length does
/// not fit its field (such a record is not indexed: lookups of its key then
/// take the scan).
pub fn encode<'a>(
    out: &mut Vec<u8>,
    timestamp: i64,
    offset: u64,
    value: &str,
    headers: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Option<()> {
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&u16::try_from(headers.len()).ok()?.to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&u16::try_from(name.len()).ok()?.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    Some(())
}

/// Appends the stored form of a record whose value or headers do not fit
/// (see [`Entry::unindexed`]).
pub fn encode_unindexed(out: &mut Vec<u8>, timestamp: i64, offset: u64) {
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&UNINDEXED.to_le_bytes());
}

/// The (timestamp, offset) of a stored record, without decoding the rest.
pub fn order(bytes: &[u8]) -> Option<(i64, u64)> {
    let mut cur = Cursor(bytes);
    Some((cur.i64()?, cur.u64()?))
}

/// Decodes a stored record; `None` when the bytes are damaged.
pub fn decode(bytes: &[u8]) -> Option<Entry> {
    let mut cur = Cursor(bytes);
    let timestamp = cur.i64()?;
    let offset = cur.u64()?;
    if cur.0 == UNINDEXED.to_le_bytes() {
        return Some(Entry {
            timestamp,
            offset,
            value: String::new(),
            headers: Vec::new(),
            unindexed: true,
        });
    }
    let value = cur.text_u32()?;
    let count = cur.u16()?;
    let mut headers = Vec::with_capacity(usize::from(count).min(bytes.len()));
    for _ in 0..count {
        let len = usize::from(cur.u16()?);
        let name = std::str::from_utf8(cur.take(len)?).ok()?.to_string();
        headers.push((name, cur.text_u32()?));
    }
    cur.0.is_empty().then_some(Entry {
        timestamp,
        offset,
        value,
        headers,
        unindexed: false,
    })
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn text_u32(&mut self) -> Option<String> {
        let len = usize::try_from(self.array().map(u32::from_le_bytes)?).ok()?;
        Some(std::str::from_utf8(self.take(len)?).ok()?.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        let headers = [("a", "1"), ("", "é")];
        encode(&mut out, -5, 7, "{\"x\":1}", headers.into_iter()).unwrap();
        assert_eq!(order(&out), Some((-5, 7)));
        let entry = decode(&out).unwrap();
        assert_eq!(entry.value, "{\"x\":1}");
        assert_eq!(
            entry.headers,
            vec![("a".into(), "1".into()), ("".into(), "é".into())]
        );
        assert!(!entry.is_tombstone() && !entry.unindexed);
        let mut marked = Vec::new();
        encode_unindexed(&mut marked, 3, 4);
        let marked = decode(&marked).unwrap();
        assert!(marked.unindexed && (marked.timestamp, marked.offset) == (3, 4));
        assert!(entry.is_after(-5, 6) && !entry.is_after(-5, 7) && !entry.is_after(0, 0));
    }

    proptest! {
        /// Damaged or arbitrary bytes decode or are refused, never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = order(&bytes);
        }

        /// Every prefix of a stored record is refused.
        #[test]
        fn truncation_is_refused(value in ".{0,20}", cut in 0usize..40) {
            let mut out = Vec::new();
            encode(&mut out, 1, 2, &value, [("h", "v")].into_iter()).unwrap();
            if cut < out.len() {
                prop_assert!(decode(&out[..cut]).is_none());
            }
        }
    }
}
