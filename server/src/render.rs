//! Records read back from the cold tier as the API's JSON objects, in the
//! same shape as hot records (`strata_broker::render` writes both).

use strata_broker::render::{RecordFields, write_fields};
use strata_broker::timestamp::TimestampWriter;
use strata_tiering::ColdRecord;

/// Appends a cold record like `strata_broker::render::write_record` does a hot one.
pub fn write_cold_record(
    out: &mut Vec<u8>,
    times: &mut TimestampWriter,
    partition: u32,
    record: &ColdRecord,
) {
    let fields = RecordFields {
        offset: record.offset,
        timestamp: record.timestamp,
        key: record.key.as_deref().map(str::as_bytes),
        value: record.value.as_bytes(),
    };
    let headers = record
        .headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()));
    write_fields(out, times, partition, fields, headers);
}
