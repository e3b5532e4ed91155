//! Queue statistics for operators, read in one aggregation.

use std::collections::BTreeMap;

use mongodb::bson::{Bson, Document, doc};
use mq_core::{QueueName, QueueStats, Result, Status};

use crate::connect::collect;
use crate::document::{as_u64, chrono, date};
use crate::store::MongoStore;

impl MongoStore {
    /// The numbers of `queue`, or of every queue in the collection, in queue-name order: one
    /// read-only aggregation grouping by queue and status. Counts what `mqctl queue stats`
    /// always counted: the oldest ready message is the oldest `scheduled` one whose `execute_at`
    /// has passed; an expired lease is a `processing` message whose lease ended before now.
    ///
    /// With `live`, only waiting and running messages are read (the depth a gauge reads on an
    /// interval), so the cost does not grow with the finished messages kept.
    pub(crate) async fn stats(
        &self,
        queue: Option<&QueueName>,
        live: bool,
    ) -> Result<Vec<QueueStats>> {
        let now = self.now().await;
        let nowb = date(now);
        let mut pipeline = Vec::with_capacity(2);
        let mut filter = Document::new();
        if let Some(q) = queue {
            filter.insert("queue", q.as_str());
        }
        if live {
            filter.insert("status", doc! { "$in": ["scheduled", "processing"] });
        }
        if !filter.is_empty() {
            pipeline.push(doc! { "$match": filter });
        }
        pipeline.push(doc! { "$group": {
            "_id": { "q": "$queue", "s": "$status" },
            "n": { "$sum": 1 },
            "oldest": { "$min": { "$cond": [
                { "$and": [
                    { "$eq": [ "$status", "scheduled" ] },
                    { "$lte": [ "$execute_at", nowb ] },
                ] },
                "$execute_at",
                Bson::Null,
            ] } },
            "expired": { "$sum": { "$cond": [
                { "$and": [
                    { "$eq": [ "$status", "processing" ] },
                    // a missing lease sorts below every date: only real dates count
                    { "$eq": [ { "$type": "$lease_expires_at" }, "date" ] },
                    { "$lt": [ "$lease_expires_at", nowb ] },
                ] },
                1,
                0,
            ] } },
        } });
        let rows: Vec<Document> = collect(self.raw.aggregate(pipeline), "queue stats").await?;
        let mut out: BTreeMap<String, QueueStats> = BTreeMap::new();
        if let Some(q) = queue {
            out.insert(q.as_str().to_owned(), QueueStats::new(q.clone()));
        }
        for row in rows {
            let key = row.get_document("_id").ok();
            let name = key.and_then(|k| k.get_str("q").ok()).unwrap_or_default();
            let status = key.and_then(|k| k.get_str("s").ok()).unwrap_or_default();
            let (Ok(name_ok), Ok(status)) = (QueueName::new(name), status.parse::<Status>()) else {
                tracing::warn!(
                    queue = name,
                    status,
                    documents = as_u64(row.get("n")),
                    "mq-mongo: queue stats skip documents with an unknown queue or status"
                );
                continue;
            };
            let stats = out
                .entry(name.to_owned())
                .or_insert_with(|| QueueStats::new(name_ok));
            stats.counts.insert(status, as_u64(row.get("n")));
            stats.expired_leases += as_u64(row.get("expired"));
            if let Ok(at) = row.get_datetime("oldest") {
                let age = (now - chrono(*at)).to_std().unwrap_or_default();
                stats.oldest_ready_age = Some(stats.oldest_ready_age.map_or(age, |a| a.max(age)));
            }
        }
        Ok(out.into_values().collect())
    }
}
