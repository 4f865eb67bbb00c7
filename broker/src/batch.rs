//! The on-disk batch: one per produce request and partition, CRC32C-protected.
//!
//! One file on purpose (about 670 lines, 130 of them unit tests): the
//! format, its encoder and its decoder must change together, and the tests
//! check each against the others in one place.
//!
//! ```text
//! batch   := header(48 bytes) producer? record*
//! header  := base_offset u64 | batch_len u32 | crc u32 | magic u8 | attributes u8
//!            | reserved u16 | record_count u32 | append_time i64
//!            | min_timestamp i64 | max_timestamp i64
//! producer := key_len u8 | key | body_hash u128      (only with ATTR_PRODUCER)
//! record  := record_len u32 | timestamp i64 | key_len i32 (-1 = null) | key
//!            | value_len u32 | value (JSON text) | header_count u16
//!            | (name_len u16 | name | value_len u32 | value)*
//! ```
//!
//! All integers are little-endian. `batch_len` counts the whole batch, header
//! included, so a reader skips a batch without decoding its records. The CRC
//! covers everything after the `crc` field; like Kafka's it leaves out
//! `base_offset`, so a batch is encoded and checksummed before the partition
//! assigns its offsets. Record offsets are implicit: `base_offset + i`.

/// Bytes of the fixed batch header.
pub const BATCH_HEADER_LEN: usize = 48;
/// The format version written into every batch.
pub const MAGIC: u8 = 1;
/// Attribute bit: the timestamps are the broker's append time.
pub const ATTR_LOG_APPEND_TIME: u8 = 1;
/// Attribute bit: the batch was written by a produce with an
/// `Idempotency-Key`, named in a producer section after the header (see
/// [`crate::idempotency`]).
pub const ATTR_PRODUCER: u8 = 2;
/// No batch is larger than this; a larger length field means corruption.
pub const MAX_BATCH_LEN: usize = 1 << 30;

const CRC_START: usize = 16;

/// Builds one batch from records pushed in order.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
    min_ts: i64,
    max_ts: i64,
}

/// One header of a record, as borrowed name and value.
pub type Header<'a> = (&'a str, &'a str);

impl BatchBuilder {
    /// A builder with room for about `capacity` bytes of records.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(BATCH_HEADER_LEN + capacity);
        buf.resize(BATCH_HEADER_LEN, 0);
        Self {
            buf,
            count: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        }
    }

    /// A builder whose batch carries `tag` (see [`ATTR_PRODUCER`]); the
    /// caller passes `ATTR_PRODUCER` to [`Self::finish`].
    pub fn with_producer(capacity: usize, tag: &ProducerTag<'_>) -> Self {
        let mut builder = Self::with_capacity(capacity + 1 + tag.key.len() + 16);
        tag.encode(&mut builder.buf);
        builder
    }

    /// Appends a record; `value` is its JSON text.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[Header<'_>],
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&timestamp.to_le_bytes());
        match key {
            Some(key) => {
                self.buf
                    .extend_from_slice(&(key.len() as i32).to_le_bytes());
                self.buf.extend_from_slice(key);
            }
            None => self.buf.extend_from_slice(&(-1i32).to_le_bytes()),
        }
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .extend_from_slice(&(headers.len() as u16).to_le_bytes());
        for (name, value) in headers {
            self.buf
                .extend_from_slice(&(name.len() as u16).to_le_bytes());
            self.buf.extend_from_slice(name.as_bytes());
            self.buf
                .extend_from_slice(&(value.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(value.as_bytes());
        }
        let record_len = (self.buf.len() - start - 4) as u32;
        self.buf[start..start + 4].copy_from_slice(&record_len.to_le_bytes());
        self.count += 1;
        self.min_ts = self.min_ts.min(timestamp);
        self.max_ts = self.max_ts.max(timestamp);
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Seals the batch: fills the header and the CRC. The base offset is set
    /// later by [`EncodedBatch::set_base_offset`], outside the CRC.
    pub fn finish(mut self, append_time: i64, attributes: u8) -> EncodedBatch {
        let len = self.buf.len() as u32;
        let (min_ts, max_ts) = if self.count == 0 {
            (append_time, append_time)
        } else {
            (self.min_ts, self.max_ts)
        };
        let h = &mut self.buf[..BATCH_HEADER_LEN];
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[16] = MAGIC;
        h[17] = attributes;
        h[20..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..32].copy_from_slice(&append_time.to_le_bytes());
        h[32..40].copy_from_slice(&min_ts.to_le_bytes());
        h[40..48].copy_from_slice(&max_ts.to_le_bytes());
        let crc = crc32c::crc32c(&self.buf[CRC_START..]);
        self.buf[12..16].copy_from_slice(&crc.to_le_bytes());
        EncodedBatch { buf: self.buf }
    }
}

/// A complete batch, ready to be appended once its base offset is known.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    buf: Vec<u8>,
}

impl EncodedBatch {
    /// A batch from bytes already checked with [`BatchView::verify`] (a
    /// leader's batch arriving at a follower).
    pub(crate) fn from_verified(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    /// Writes the offset of the batch's first record (not covered by the CRC).
    pub fn set_base_offset(&mut self, base_offset: u64) {
        self.buf[0..8].copy_from_slice(&base_offset.to_le_bytes());
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// A view of the encoded batch.
    pub fn view(&self) -> BatchView<'_> {
        BatchView { bytes: &self.buf }
    }
}

/// Why bytes at some position are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch length {0} is out of bounds")]
    BadLength(usize),
    #[error("unknown batch magic {0}")]
    BadMagic(u8),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("malformed record {0} in batch")]
    BadRecord(u32),
}

/// The outcome of looking for a batch at the start of a buffer.
#[derive(Debug)]
pub enum Peek<'a> {
    /// A complete batch; its CRC is not yet verified.
    Batch(BatchView<'a>),
    /// The buffer holds only a prefix: at least this many bytes are needed.
    NeedBytes(usize),
}

/// Looks at the batch starting at `buf[0]` without copying it.
pub fn peek_batch(buf: &[u8]) -> Result<Peek<'_>, BatchError> {
    if buf.len() < BATCH_HEADER_LEN {
        return Ok(Peek::NeedBytes(BATCH_HEADER_LEN));
    }
    let len = read_u32(buf, 8) as usize;
    if !(BATCH_HEADER_LEN..=MAX_BATCH_LEN).contains(&len) {
        return Err(BatchError::BadLength(len));
    }
    if buf[16] != MAGIC {
        return Err(BatchError::BadMagic(buf[16]));
    }
    if buf.len() < len {
        return Ok(Peek::NeedBytes(len));
    }
    Ok(Peek::Batch(BatchView { bytes: &buf[..len] }))
}

/// A batch's header and producer tag, read without its records (the
/// records need not be in `bytes`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchHeader<'a> {
    pub base_offset: u64,
    /// The whole batch's length.
    pub len: usize,
    pub append_time: i64,
    pub producer: Option<ProducerTag<'a>>,
}

impl<'a> BatchHeader<'a> {
    /// Parses the header at `bytes[0]` (and the tag after it, when the
    /// batch has one and `bytes` holds it).
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, BatchError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(BatchError::BadLength(bytes.len()));
        }
        let len = read_u32(bytes, 8) as usize;
        if !(BATCH_HEADER_LEN..=MAX_BATCH_LEN).contains(&len) {
            return Err(BatchError::BadLength(len));
        }
        if bytes[16] != MAGIC {
            return Err(BatchError::BadMagic(bytes[16]));
        }
        let producer = match bytes[17] & ATTR_PRODUCER {
            0 => None,
            _ => {
                ProducerTag::decode(&bytes[BATCH_HEADER_LEN..len.min(bytes.len())]).map(|(t, _)| t)
            }
        };
        Ok(Self {
            base_offset: read_u64(bytes, 0),
            len,
            append_time: read_i64(bytes, 24),
            producer,
        })
    }
}

/// A borrowed, encoded batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// The whole batch, header included.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Total size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// Always false: a batch has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        read_u64(self.bytes, 0)
    }
    /// Number of records.
    pub fn record_count(&self) -> u32 {
        read_u32(self.bytes, 20)
    }
    /// One past the offset of the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset() + u64::from(self.record_count())
    }
    /// Header attribute bits (`ATTR_*`).
    pub fn attributes(&self) -> u8 {
        self.bytes[17]
    }
    /// Broker wall-clock time when the batch was built.
    pub fn append_time(&self) -> i64 {
        read_i64(self.bytes, 24)
    }
    /// Smallest record timestamp.
    pub fn min_timestamp(&self) -> i64 {
        read_i64(self.bytes, 32)
    }
    /// Largest record timestamp.
    pub fn max_timestamp(&self) -> i64 {
        read_i64(self.bytes, 40)
    }

    /// Checks the stored CRC32C against the bytes.
    pub fn verify(&self) -> Result<(), BatchError> {
        let stored = read_u32(self.bytes, 12);
        let computed = crc32c::crc32c(&self.bytes[CRC_START..]);
        if stored == computed {
            Ok(())
        } else {
            Err(BatchError::CrcMismatch { stored, computed })
        }
    }

    /// The producer section of a batch written with an idempotency key,
    /// or `None` (also when the section is malformed, which only happens
    /// when the CRC was not verified first).
    pub fn producer(&self) -> Option<ProducerTag<'a>> {
        if self.attributes() & ATTR_PRODUCER == 0 {
            return None;
        }
        ProducerTag::decode(&self.bytes[BATCH_HEADER_LEN..]).map(|(tag, _)| tag)
    }

    /// Where the records begin: after the header and the producer section.
    fn records_start(&self) -> usize {
        let section = match self.attributes() & ATTR_PRODUCER {
            0 => 0,
            _ => ProducerTag::decode(&self.bytes[BATCH_HEADER_LEN..]).map_or(0, |(_, len)| len),
        };
        BATCH_HEADER_LEN + section
    }

    /// The records, in offset order. Yields an error for a malformed record,
    /// which only happens when the CRC was not verified first.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            bytes: &self.bytes[self.records_start()..],
            offset: self.base_offset(),
            index: 0,
            count: self.record_count(),
        }
    }
}

/// Who wrote a batch: the produce request's idempotency key and a hash of
/// its body, so a retry of the same request is recognised (also after a
/// restart: the index is rebuilt from these) and a different request
/// reusing the key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerTag<'a> {
    /// 1 to 128 printable ASCII characters.
    pub key: &'a str,
    /// 128-bit XXH3 of the request body.
    pub body_hash: u128,
}

impl<'a> ProducerTag<'a> {
    /// Appends `key_len u8 | key | body_hash u128`.
    fn encode(&self, out: &mut Vec<u8>) {
        let len = u8::try_from(self.key.len()).unwrap_or(u8::MAX);
        out.push(len);
        out.extend_from_slice(&self.key.as_bytes()[..usize::from(len)]);
        out.extend_from_slice(&self.body_hash.to_le_bytes());
    }

    /// The tag at the start of `bytes` and its encoded length, or `None`
    /// when the bytes are not one.
    fn decode(bytes: &'a [u8]) -> Option<(Self, usize)> {
        let len = usize::from(*bytes.first()?);
        let key = std::str::from_utf8(bytes.get(1..1 + len)?).ok()?;
        let hash = bytes.get(1 + len..1 + len + 16)?;
        let body_hash = u128::from_le_bytes(hash.try_into().ok()?);
        Some((Self { key, body_hash }, 1 + len + 16))
    }
}

/// A borrowed record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// The record's JSON text.
    pub value: &'a [u8],
    headers: &'a [u8],
    header_count: u16,
}

/// Bytes that encode one header's two lengths (`name_len u16 | value_len u32`).
const HEADER_LENGTHS_LEN: usize = 6;

/// What a record weighs wherever the API budgets or reports bytes (a
/// consume's `max_bytes`, hot or cold): its key, its value and its headers'
/// names and values, without any encoding overhead. Both tiers count with
/// this, so a page is cut at the same record whichever tier serves it.
pub fn record_size(key_len: usize, value_len: usize, header_data_len: usize) -> usize {
    key_len + value_len + header_data_len
}

impl<'a> RecordView<'a> {
    /// The record's [`record_size`].
    pub fn data_len(&self) -> usize {
        let header_data = self
            .headers
            .len()
            .saturating_sub(HEADER_LENGTHS_LEN * usize::from(self.header_count));
        record_size(
            self.key.map_or(0, <[u8]>::len),
            self.value.len(),
            header_data,
        )
    }

    /// The record's headers as (name, value) byte pairs, in produce order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            bytes: self.headers,
            left: self.header_count,
        }
    }
    /// Number of headers.
    pub fn header_count(&self) -> u16 {
        self.header_count
    }
}

/// Iterator over a record's headers.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    bytes: &'a [u8],
    left: u16,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut cur = Cursor { bytes: self.bytes };
        let name_len = cur.u16()? as usize;
        let name = cur.take(name_len)?;
        let value_len = cur.u32()? as usize;
        let value = cur.take(value_len)?;
        self.bytes = cur.bytes;
        Some((name, value))
    }
}

/// Iterator over the records of a batch.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    bytes: &'a [u8],
    offset: u64,
    index: u32,
    count: u32,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let index = self.index;
        self.index += 1;
        let parsed = parse_record(&mut self.bytes, self.offset);
        self.offset += 1;
        match parsed {
            Some(record) => Some(Ok(record)),
            None => {
                self.index = self.count;
                Some(Err(BatchError::BadRecord(index)))
            }
        }
    }
}

fn parse_record<'a>(bytes: &mut &'a [u8], offset: u64) -> Option<RecordView<'a>> {
    let mut outer = Cursor { bytes };
    let record_len = outer.u32()? as usize;
    let body = outer.take(record_len)?;
    *bytes = outer.bytes;
    let mut cur = Cursor { bytes: body };
    let timestamp = cur.i64()?;
    let key_len = cur.i32()?;
    let key = if key_len < 0 {
        None
    } else {
        Some(cur.take(key_len as usize)?)
    };
    let value_len = cur.u32()? as usize;
    let value = cur.take(value_len)?;
    let header_count = cur.u16()?;
    Some(RecordView {
        offset,
        timestamp,
        key,
        value,
        headers: cur.bytes,
        header_count,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| read_u32(b, 0))
    }
    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|b| read_i64(b, 0))
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    read_u64(b, at) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type OwnedRecord = (i64, Option<Vec<u8>>, Vec<u8>, Vec<(String, String)>);

    fn encode(records: &[OwnedRecord], base: u64) -> EncodedBatch {
        encode_tagged(records, base, None)
    }

    fn encode_tagged(
        records: &[OwnedRecord],
        base: u64,
        tag: Option<&ProducerTag<'_>>,
    ) -> EncodedBatch {
        let mut builder = match tag {
            Some(tag) => BatchBuilder::with_producer(64, tag),
            None => BatchBuilder::with_capacity(64),
        };
        for (ts, key, value, headers) in records {
            let headers: Vec<Header<'_>> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            builder.push(*ts, key.as_deref(), value, &headers);
        }
        let attributes = if tag.is_some() { ATTR_PRODUCER } else { 0 };
        let mut batch = builder.finish(1_000, attributes);
        batch.set_base_offset(base);
        batch
    }

    fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
        (
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(("[a-z]{0,8}", "\\PC{0,12}"), 0..4),
        )
    }

    proptest! {
        #[test]
        fn round_trips(
            records in proptest::collection::vec(record_strategy(), 0..30),
            base in 0u64..1 << 50,
            key in proptest::option::of("[ -~]{1,128}"),
            body_hash in any::<u128>(),
        ) {
            // With and without a producer section: it never shifts a record.
            let tag = key.as_deref().map(|key| ProducerTag { key, body_hash });
            let batch = encode_tagged(&records, base, tag.as_ref());
            prop_assert_eq!(batch.view().producer(), tag);
            let Peek::Batch(view) = peek_batch(batch.as_bytes()).unwrap() else {
                panic!("complete batch reported as incomplete");
            };
            view.verify().unwrap();
            prop_assert_eq!(view.base_offset(), base);
            prop_assert_eq!(view.record_count() as usize, records.len());
            prop_assert_eq!(view.len(), batch.as_bytes().len());
            let decoded: Vec<_> = view.records().map(|r| r.unwrap()).collect();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, base + i as u64);
                prop_assert_eq!(got.timestamp, want.0);
                prop_assert_eq!(got.key, want.1.as_deref());
                prop_assert_eq!(got.value, &want.2[..]);
                let headers: Vec<(String, String)> = got
                    .headers()
                    .map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
                    .collect();
                prop_assert_eq!(&headers, &want.3);
            }
            if !records.is_empty() {
                prop_assert_eq!(view.min_timestamp(), records.iter().map(|r| r.0).min().unwrap());
                prop_assert_eq!(view.max_timestamp(), records.iter().map(|r| r.0).max().unwrap());
            }
        }

        #[test]
        fn any_flipped_bit_after_the_crc_is_detected(
            records in proptest::collection::vec(record_strategy(), 1..5),
            pick in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let batch = encode(&records, 7);
            let mut bytes = batch.as_bytes().to_vec();
            let at = CRC_START + pick.index(bytes.len() - CRC_START);
            bytes[at] ^= 1 << bit;
            let outcome = peek_batch(&bytes).and_then(|peek| match peek {
                Peek::Batch(view) => view.verify(),
                Peek::NeedBytes(_) => Err(BatchError::BadLength(0)),
            });
            prop_assert!(outcome.is_err());
        }
    }

    #[test]
    fn prefix_asks_for_more_bytes() {
        let batch = encode(&[(1, None, b"1".to_vec(), vec![])], 0);
        let bytes = batch.as_bytes();
        assert!(matches!(
            peek_batch(&bytes[..10]),
            Ok(Peek::NeedBytes(BATCH_HEADER_LEN))
        ));
        assert!(
            matches!(peek_batch(&bytes[..bytes.len() - 1]), Ok(Peek::NeedBytes(n)) if n == bytes.len())
        );
    }

    #[test]
    fn crc_mismatch_is_reported() {
        let batch = encode(
            &[(1, Some(b"k".to_vec()), b"{\"a\":1}".to_vec(), vec![])],
            0,
        );
        let mut bytes = batch.as_bytes().to_vec();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        let Peek::Batch(view) = peek_batch(&bytes).unwrap() else {
            panic!("incomplete")
        };
        assert!(matches!(view.verify(), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn garbage_length_is_rejected() {
        let mut bytes = vec![0u8; 64];
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(peek_batch(&bytes).unwrap_err(), BatchError::BadLength(3));
    }
}
