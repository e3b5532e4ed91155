//! The key layout of the Redis lease store: which hash tag, and so which Redis Cluster slot,
//! each key of a stream lives under.

/// The most slot buckets a store may spread a stream over: each one costs a command per
/// membership renewal.
pub(super) const MAX_SLOT_BUCKETS: u16 = 1024;

/// FNV-1a (32 bits) of `bytes`: the shard-to-bucket hash. Fixed by its definition (offset basis
/// 2166136261, prime 16777619), so every version of the crate on every platform puts a shard in
/// the same bucket.
pub(super) fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The key names of one store: a prefix and a number of slot buckets.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
    pub(super) buckets: u16,
}

/// The hash tag of a group of keys: the whole stream, or one slot bucket of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Tag {
    /// `{<stream>}`: the stream-wide keys, and every key with one bucket.
    Stream,
    /// `{<stream>#<b>}`: the per-shard keys of bucket `b` (with more than one bucket).
    Bucket(u16),
}

impl Keys {
    /// The tag of `shard`'s keys.
    pub(super) fn shard_tag(&self, shard: &str) -> Tag {
        if self.buckets <= 1 {
            Tag::Stream
        } else {
            // the remainder is below `buckets`, a u16
            Tag::Bucket((fnv1a_32(shard.as_bytes()) % u32::from(self.buckets)) as u16)
        }
    }

    /// The tag of every bucket, in order: one (`Stream`) with one bucket.
    pub(super) fn tags(&self) -> Vec<Tag> {
        if self.buckets <= 1 {
            vec![Tag::Stream]
        } else {
            (0..self.buckets).map(Tag::Bucket).collect()
        }
    }

    fn at(&self, stream: &str, tag: Tag, rest: &str) -> String {
        match tag {
            Tag::Stream => format!("{}:{{{stream}}}:{rest}", self.prefix),
            Tag::Bucket(b) => format!("{}:{{{stream}#{b}}}:{rest}", self.prefix),
        }
    }

    /// `…:lease:<shard>`, in the shard's bucket.
    pub(super) fn lease(&self, stream: &str, shard: &str) -> String {
        self.at(stream, self.shard_tag(shard), &format!("lease:{shard}"))
    }

    /// What every lease key of bucket `tag` starts with (the shard id follows).
    pub(super) fn lease_prefix(&self, stream: &str, tag: Tag) -> String {
        self.at(stream, tag, "lease:")
    }

    /// `…:poison:<shard>`, in the shard's bucket.
    pub(super) fn poison(&self, stream: &str, shard: &str) -> String {
        self.at(stream, self.shard_tag(shard), &format!("poison:{shard}"))
    }

    /// The set of the shards of bucket `tag` ever acquired.
    pub(super) fn shards(&self, stream: &str, tag: Tag) -> String {
        self.at(stream, tag, "shards")
    }

    /// Bucket `tag`'s copy of the memberships hash.
    pub(super) fn memberships(&self, stream: &str, tag: Tag) -> String {
        self.at(stream, tag, "memberships")
    }

    /// Bucket `tag`'s version hash.
    pub(super) fn version(&self, stream: &str, tag: Tag) -> String {
        self.at(stream, tag, "version")
    }

    /// The stream-wide sorted set of live instances.
    pub(super) fn members(&self, stream: &str) -> String {
        self.at(stream, Tag::Stream, "members")
    }

    /// The stream-wide listing lead hash.
    pub(super) fn listing_lead(&self, stream: &str) -> String {
        self.at(stream, Tag::Stream, "listing-lead")
    }

    /// The stream-wide published listing hash.
    pub(super) fn listing(&self, stream: &str) -> String {
        self.at(stream, Tag::Stream, "listing")
    }

    /// The stream-wide hash recording the number of slot buckets.
    pub(super) fn layout(&self, stream: &str) -> String {
        self.at(stream, Tag::Stream, "layout")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(buckets: u16) -> Keys {
        Keys {
            prefix: "mq".into(),
            buckets,
        }
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn one_bucket_keeps_every_key_under_the_stream_tag() {
        let k = keys(1);
        assert_eq!(
            k.lease("orders", "shardId-000000000001"),
            "mq:{orders}:lease:shardId-000000000001"
        );
        assert_eq!(k.poison("orders", "s"), "mq:{orders}:poison:s");
        assert_eq!(k.shards("orders", Tag::Stream), "mq:{orders}:shards");
        assert_eq!(
            k.memberships("orders", Tag::Stream),
            "mq:{orders}:memberships"
        );
        assert_eq!(k.version("orders", Tag::Stream), "mq:{orders}:version");
        assert_eq!(k.members("orders"), "mq:{orders}:members");
        assert_eq!(k.listing_lead("orders"), "mq:{orders}:listing-lead");
        assert_eq!(k.listing("orders"), "mq:{orders}:listing");
        assert_eq!(k.layout("orders"), "mq:{orders}:layout");
        assert_eq!(k.tags(), vec![Tag::Stream]);
    }

    #[test]
    fn buckets_put_shard_keys_under_their_bucket_tag() {
        let k = keys(16);
        let shard = "shardId-000000000001";
        let b = fnv1a_32(shard.as_bytes()) % 16;
        assert_eq!(
            k.lease("orders", shard),
            format!("mq:{{orders#{b}}}:lease:{shard}")
        );
        assert_eq!(
            k.poison("orders", shard),
            format!("mq:{{orders#{b}}}:poison:{shard}")
        );
        assert_eq!(k.shards("orders", Tag::Bucket(3)), "mq:{orders#3}:shards");
        assert_eq!(k.members("orders"), "mq:{orders}:members");
        assert_eq!(k.tags().len(), 16);
        // 64 shard ids spread over most of the buckets
        let used: std::collections::BTreeSet<_> = (0..64)
            .map(|i| k.shard_tag(&format!("shardId-{i:012}")))
            .collect();
        assert!(used.len() >= 12, "{used:?}");
    }
}
