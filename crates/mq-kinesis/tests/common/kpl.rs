//! Records aggregated the way the Kinesis Producer Library aggregates them: the magic
//! `F3 89 9A C2`, a protobuf `AggregatedRecord` (a table of partition keys, a table of explicit
//! hash keys, the user records pointing into them), then the MD5 of the protobuf. The Kinesis
//! record's partition key is the first user record's, as the KPL sends it.
#![allow(dead_code, unreachable_pub)]

use md5::{Digest, Md5};

pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// One user record: partition key, explicit hash key, data.
pub struct UserRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
    varint(field << 3 | wire, out);
}

fn bytes(field: u64, b: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// The protobuf `AggregatedRecord` of `records`, tables deduplicated in first-seen order.
pub fn protobuf(records: &[UserRecord]) -> Vec<u8> {
    let mut pks: Vec<&str> = Vec::new();
    let mut ehks: Vec<&str> = Vec::new();
    let mut body = Vec::new();
    for r in records {
        let pk = match pks.iter().position(|k| *k == r.partition_key) {
            Some(i) => i,
            None => {
                pks.push(&r.partition_key);
                pks.len() - 1
            }
        };
        let ehk = r
            .explicit_hash_key
            .as_deref()
            .map(|h| match ehks.iter().position(|k| *k == h) {
                Some(i) => i,
                None => {
                    ehks.push(h);
                    ehks.len() - 1
                }
            });
        let mut rec = Vec::new();
        key(1, 0, &mut rec);
        varint(pk as u64, &mut rec);
        if let Some(i) = ehk {
            key(2, 0, &mut rec);
            varint(i as u64, &mut rec);
        }
        bytes(3, &r.data, &mut rec);
        bytes(3, &rec, &mut body);
    }
    let mut out = Vec::new();
    for k in &pks {
        bytes(1, k.as_bytes(), &mut out);
    }
    for h in &ehks {
        bytes(2, h.as_bytes(), &mut out);
    }
    out.extend_from_slice(&body);
    out
}

/// The data of the Kinesis record that carries `records`.
pub fn aggregate(records: &[UserRecord]) -> Vec<u8> {
    let proto = protobuf(records);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&proto);
    out.extend_from_slice(&Md5::digest(&proto));
    out
}

/// Puts aggregated records on `stream`, one PutRecords entry each, with the first user record's
/// partition key; returns their sequence numbers.
pub async fn put(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    aggregates: Vec<Vec<UserRecord>>,
) -> Vec<String> {
    let mut seqs = Vec::new();
    for chunk in aggregates.chunks(100) {
        let entries = chunk
            .iter()
            .map(|users| {
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(&users[0].partition_key)
                    .data(aws_smithy_types::Blob::new(aggregate(users)))
                    .build()
                    .unwrap()
            })
            .collect::<Vec<_>>();
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_record_count(), Some(0));
        seqs.extend(
            out.records()
                .iter()
                .map(|r| r.sequence_number().unwrap_or_default().to_owned()),
        );
    }
    seqs
}
