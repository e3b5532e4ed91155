//! The conformance suite on PostgreSQL as a role that may only read and write rows: an owner
//! role ran the migrations (connected once with the default `create_schema(true)`), then the
//! runtime role, with the GRANTs of docs/security.md and nothing else, connects with
//! `create_schema(false)` and runs every case.

#[path = "support/dropped.rs"]
mod dropped;
#[path = "support/factory.rs"]
mod support;

use std::sync::Arc;

use mq_core::backend::QueueStore;
use mq_core::testkit::{QueueFactory, service_url};
use mq_core::{CommonOptions, ErrorChain, MessageQueue};
use mq_sql::{PgQueue, SqlStore};
use sqlx::{AssertSqlSafe, PgPool};

use dropped::DroppedTables;
use support::{Db, drop_table, options, table_name};

/// The runtime role: LOGIN, no other attribute, owns nothing.
const RUNTIME_ROLE: &str = "mqtest_runtime";

/// `url` (the owner's) logged in as the runtime role.
fn runtime_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let hosts = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{RUNTIME_ROLE}@{hosts}")
}

/// As the owner: the runtime role, with no rights of its own (a concurrent case may have
/// created it already).
async fn ensure_role(owner: &PgPool) {
    let created = sqlx::query(AssertSqlSafe(format!("CREATE ROLE {RUNTIME_ROLE} LOGIN")))
        .execute(owner)
        .await;
    if let Err(e) = created {
        let text = e.to_string();
        assert!(
            text.contains("already exists") || text.contains("duplicate key"),
            "create role: {text}"
        );
    }
}

/// As the owner: the runtime role's grants on `table`, as docs/security.md lists them.
async fn grant_dml(owner: &PgPool, table: &str) {
    ensure_role(owner).await;
    for grant in [
        format!("GRANT USAGE ON SCHEMA public TO {RUNTIME_ROLE}"),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {table}, {table}_ids, {table}_paused \
             TO {RUNTIME_ROLE}"
        ),
        format!("GRANT SELECT ON {table}_versions TO {RUNTIME_ROLE}"),
    ] {
        sqlx::query(AssertSqlSafe(grant.clone()))
            .execute(owner)
            .await
            .unwrap_or_else(|e| panic!("{grant}: {e}"));
    }
}

#[derive(Default)]
struct RuntimeRole {
    used: DroppedTables,
}

#[async_trait::async_trait]
impl QueueFactory for RuntimeRole {
    fn skip_reason(&self) -> Option<String> {
        service_url("MQ_TEST_POSTGRES_URL").err()
    }

    async fn create(&self, test: &str, common: CommonOptions) -> Arc<dyn MessageQueue> {
        let url = service_url("MQ_TEST_POSTGRES_URL").unwrap_or_else(|e| panic!("{e}"));
        let table = table_name("lp", test);
        drop_table(Db::Postgres, &url, &table).await;
        self.used.add(Db::Postgres, &url, &table);
        // The migration step, as the owner.
        let migrated = PgQueue::connect(&url, options(&table))
            .await
            .unwrap_or_else(|e| panic!("migrate as the owner: {e:?}"));
        migrated.shutdown().await.expect("shutdown");
        let owner = PgPool::connect(&url).await.expect("owner pool");
        grant_dml(&owner, &table).await;
        owner.close().await;
        let runtime = options(&table).create_schema(false).common(common);
        Arc::new(
            PgQueue::connect(&runtime_url(&url), runtime)
                .await
                .unwrap_or_else(|e| {
                    panic!("connect as {RUNTIME_ROLE}: {}", ErrorChain::from_error(&e))
                }),
        )
    }

    async fn store(&self, test: &str) -> Option<Arc<dyn QueueStore>> {
        let url = service_url("MQ_TEST_POSTGRES_URL").ok()?;
        let opts = options(&table_name("lp", test)).create_schema(false);
        Some(Arc::new(
            SqlStore::<sqlx::Postgres>::connect(&runtime_url(&url), opts)
                .await
                .unwrap_or_else(|e| panic!("store as {RUNTIME_ROLE}: {e:?}")),
        ))
    }
}

mq_core::conformance_tests!(RuntimeRole::default());

/// The queue controls (pause table included) with the same grants.
mod control {
    use super::RuntimeRole;

    mq_core::queue_control_tests!(RuntimeRole::default());
}

/// The role really has no DDL rights (PostgreSQL 15 and later: `public` is no longer writable
/// by everyone), so the suite above ran without them.
#[tokio::test]
async fn the_runtime_role_cannot_create_the_table() {
    let url = match service_url("MQ_TEST_POSTGRES_URL") {
        Ok(url) => url,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let table = table_name("lp", "cannot_create");
    drop_table(Db::Postgres, &url, &table).await;
    let owner = PgPool::connect(&url).await.expect("owner pool");
    ensure_role(&owner).await;
    owner.close().await;
    let e = PgQueue::connect(&runtime_url(&url), options(&table))
        .await
        .expect_err("the runtime role must not be able to create the table");
    let text = ErrorChain::from_error(&e).to_string();
    assert!(text.contains("permission denied"), "{text}");
    drop_table(Db::Postgres, &url, &table).await;
}
