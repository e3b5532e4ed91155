//! Records as the handler sees them: a plain Kinesis record, or each user record of a record
//! the Kinesis Producer Library aggregated.
//!
//! An aggregated record is the magic `F3 89 9A C2`, a protobuf `AggregatedRecord` and the MD5
//! of that protobuf:
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes data = 3;
//!   repeated Tag tags = 4;
//! }
//! ```
//!
//! User record `i` of an aggregate has the sub-sequence number `i`. A record that starts with
//! the magic but whose digest or protobuf is wrong is kept whole and marked broken: it goes to
//! the dead letters with its bytes.

use aws_sdk_kinesis::types::Record;
use chrono::{DateTime, TimeZone, Utc};
use md5::{Digest, Md5};

use crate::position::Checkpoint;

/// The first four bytes of a KPL-aggregated record.
pub(crate) const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// One record for the handler.
#[derive(Debug, Clone)]
pub(crate) struct UserRecord {
    /// The sequence number of the Kinesis record it came in.
    pub(crate) sequence: String,
    /// `(index, count)` in its aggregate; `None` for a record that was not aggregated.
    pub(crate) sub: Option<(u32, u32)>,
    /// Its partition key (a user record's own, from the aggregate's table).
    pub(crate) partition_key: String,
    /// Its bytes (the whole Kinesis record's when broken).
    pub(crate) data: Vec<u8>,
    /// When the Kinesis record arrived.
    pub(crate) arrival: DateTime<Utc>,
    /// Why an aggregated record could not be expanded.
    pub(crate) broken: Option<String>,
}

impl UserRecord {
    /// The checkpoint once this record and everything before it is done.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        match self.sub {
            Some((i, n)) if i + 1 < n => Checkpoint::inside(&self.sequence, i + 1),
            _ => Checkpoint::after(&self.sequence),
        }
    }

    /// The sequence number, with the sub-sequence number of an aggregated user record
    /// (`<sequence>:<sub-sequence>`): a name for ids, dead letters and logs.
    pub(crate) fn label(&self) -> String {
        match self.sub {
            Some((i, _)) => format!("{}:{i}", self.sequence),
            None => self.sequence.clone(),
        }
    }
}

/// Expands `records` into user records, leaving out those `position` says are done (the first
/// user records of the aggregate a checkpoint falls inside).
pub(crate) fn expand(records: Vec<Record>, position: Option<&Checkpoint>) -> Vec<UserRecord> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let arrival = r
            .approximate_arrival_timestamp()
            .and_then(|t| t.to_millis().ok())
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .unwrap_or_else(Utc::now);
        let skip = position
            .and_then(|p| p.done_in(r.sequence_number()))
            .unwrap_or(0);
        let sequence = r.sequence_number().to_owned();
        let key = r.partition_key().unwrap_or_default().to_owned();
        let data = r.data.into_inner();
        let plain = |data: Vec<u8>, broken: Option<String>| UserRecord {
            sequence: sequence.clone(),
            sub: None,
            partition_key: key.clone(),
            data,
            arrival,
            broken,
        };
        if !data.starts_with(&KPL_MAGIC) {
            out.push(plain(data, None));
            continue;
        }
        match decode_aggregate(&data) {
            Ok(users) => {
                let n = u32::try_from(users.len()).unwrap_or(u32::MAX);
                for (i, (partition_key, bytes)) in (0..n).zip(users) {
                    if i < skip {
                        continue;
                    }
                    out.push(UserRecord {
                        sequence: sequence.clone(),
                        sub: Some((i, n)),
                        partition_key,
                        data: bytes,
                        arrival,
                        broken: None,
                    });
                }
            }
            Err(why) => out.push(plain(data, Some(why))),
        }
    }
    out
}

/// The user records of an aggregated record (magic included): their partition keys and data.
/// Err with the reason when the digest or the protobuf is wrong.
pub(crate) fn decode_aggregate(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let body = data
        .strip_prefix(&KPL_MAGIC)
        .filter(|b| b.len() >= DIGEST_LEN)
        .ok_or("aggregated record shorter than its magic and digest")?;
    let (proto, digest) = body.split_at(body.len() - DIGEST_LEN);
    if Md5::digest(proto)[..] != *digest {
        return Err("aggregated record's MD5 digest does not match its content".into());
    }
    let mut keys: Vec<String> = Vec::new();
    let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut r = Reader(proto);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => keys.push(
                String::from_utf8(b.to_vec())
                    .map_err(|_| "aggregated record has a partition key that is not UTF-8")?,
            ),
            (3, Value::Bytes(b)) => records.push(decode_user_record(b)?),
            _ => {}
        }
    }
    records
        .into_iter()
        .map(|(index, data)| {
            let key = usize::try_from(index)
                .ok()
                .and_then(|i| keys.get(i))
                .ok_or_else(|| {
                    format!(
                        "aggregated record's partition key index {index} is outside its table of {}",
                        keys.len()
                    )
                })?;
            Ok((key.clone(), data))
        })
        .collect()
}

fn decode_user_record(b: &[u8]) -> Result<(u64, Vec<u8>), String> {
    let (mut index, mut data) = (None, None);
    let mut r = Reader(b);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => index = Some(v),
            (3, Value::Bytes(d)) => data = Some(d.to_vec()),
            _ => {}
        }
    }
    match (index, data) {
        (Some(i), Some(d)) => Ok((i, d)),
        _ => {
            Err("aggregated record holds a user record without partition key index or data".into())
        }
    }
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// A protobuf reader of the wire types the KPL writes (varint, length-delimited; fixed-size
/// fields are skipped).
struct Reader<'a>(&'a [u8]);

const TRUNCATED: &str = "aggregated record's protobuf is truncated";

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(TRUNCATED)?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("aggregated record's protobuf has a varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| TRUNCATED)?;
        if n > self.0.len() {
            return Err(TRUNCATED.into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field number and value; `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            t => return Err(format!("aggregated record's protobuf has wire type {t}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(field: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn aggregate(keys: &[&str], records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut proto = Vec::new();
        for k in keys {
            bytes_field(1, k.as_bytes(), &mut proto);
        }
        for (i, d) in records {
            let mut r = Vec::new();
            varint(1 << 3, &mut r);
            varint(*i, &mut r);
            bytes_field(3, d, &mut r);
            bytes_field(3, &r, &mut proto);
        }
        let mut out = KPL_MAGIC.to_vec();
        out.extend_from_slice(&proto);
        out.extend_from_slice(&Md5::digest(&proto));
        out
    }

    #[test]
    fn user_records_come_out_with_their_own_keys() {
        let data = aggregate(&["a", "b"], &[(1, b"one"), (0, b"two"), (1, b"")]);
        let got = decode_aggregate(&data).expect("valid");
        assert_eq!(
            got,
            vec![
                ("b".to_owned(), b"one".to_vec()),
                ("a".to_owned(), b"two".to_vec()),
                ("b".to_owned(), Vec::new()),
            ]
        );
    }

    #[test]
    fn a_wrong_digest_an_index_outside_the_table_and_truncation_are_refused() {
        let mut data = aggregate(&["a"], &[(0, b"x")]);
        let last = data.len() - 1;
        data[last] ^= 1;
        assert!(decode_aggregate(&data).unwrap_err().contains("MD5"));
        let data = aggregate(&["a"], &[(3, b"x")]);
        assert!(decode_aggregate(&data).unwrap_err().contains("index 3"));
        let mut proto = Vec::new();
        bytes_field(1, b"abc", &mut proto);
        proto.truncate(3);
        let mut data = KPL_MAGIC.to_vec();
        data.extend_from_slice(&proto);
        data.extend_from_slice(&Md5::digest(&proto));
        assert!(decode_aggregate(&data).unwrap_err().contains("truncated"));
        assert!(decode_aggregate(&KPL_MAGIC).is_err());
    }
}
