//! `mqctl kinesis status` run as a real binary against an embedded Kinesis emulator (with a
//! split shard) and a real Redis lease store.

#[path = "common/kinesis.rs"]
mod common;

use std::time::Duration;

use common::Emulator;
use mq::kinesis::{LeaseStore, RedisLeaseStore};
use mq_core::testkit::service_url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_lineage_leases_checkpoints_poison_and_instances() {
    let redis = match service_url("REDIS_URL") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let emu = Emulator::start().await;
    let stream = "mqctl-status";
    emu.create_stream(stream, 1).await;
    emu.client
        .split_shard()
        .stream_name(stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await
        .expect("split");
    emu.wait_active(stream).await;

    let prefix = format!("mqctl-test-{}", std::process::id());
    let leases = RedisLeaseStore::connect(&redis, prefix.clone())
        .await
        .expect("redis");
    let ttl = Duration::from_secs(60);
    let parent = leases
        .acquire(stream, "shardId-000000000000", "instance-b", ttl)
        .await
        .expect("acquire")
        .expect("free");
    assert!(leases.finish(&parent).await.expect("finish"));
    assert!(leases.release(&parent).await.expect("release"));
    let child = leases
        .acquire(stream, "shardId-000000000001", "instance-a", ttl)
        .await
        .expect("acquire")
        .expect("free");
    leases
        .checkpoint(&child, "4959033827149025660855969253836")
        .await
        .expect("checkpoint");
    for _ in 0..2 {
        leases
            .record_failure(
                stream,
                "shardId-000000000001",
                "4959033827149025660855969253836",
            )
            .await
            .expect("failure");
    }
    leases
        .heartbeat(stream, "instance-a", ttl)
        .await
        .expect("heartbeat");

    let args = common::kinesis_args(
        &["status", "--stream", stream],
        &redis,
        &prefix,
        &emu.endpoint,
    );
    let run = move |json: bool| {
        let mut args = args.clone();
        if json {
            args.push("--json".into());
        }
        common::mqctl(&args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    };
    let run2 = run.clone();
    let out = tokio::task::spawn_blocking(move || run(true))
        .await
        .expect("run");
    let status: serde_json::Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
    assert_eq!(status["live_instances"], serde_json::json!(["instance-a"]));
    let shards = status["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3, "{status}");
    let p = &shards[0];
    assert_eq!(p["shard"], "shardId-000000000000");
    assert_eq!(p["closed"], true);
    assert_eq!(p["finished"], true);
    assert_eq!(p["owner"], serde_json::Value::Null, "released");
    assert_eq!(p["epoch"], 1);
    assert_eq!(
        p["children"],
        serde_json::json!(["shardId-000000000001", "shardId-000000000002"])
    );
    let c = &shards[1];
    assert_eq!(c["parent"], "shardId-000000000000");
    assert_eq!(c["owner"], "instance-a");
    assert_eq!(c["live"], true);
    assert_eq!(c["epoch"], 1);
    assert_eq!(c["checkpoint"], "4959033827149025660855969253836");
    assert_eq!(c["poison"]["4959033827149025660855969253836"], 2);
    assert_eq!(shards[2]["owner"], serde_json::Value::Null);
    // the parent is finished, so both children may be read; the only live instance gets both
    assert_eq!(
        p["assigned_to"],
        serde_json::Value::Null,
        "finished: never assigned"
    );
    assert_eq!(c["assigned_to"], "instance-a");
    assert_eq!(shards[2]["assigned_to"], "instance-a");
    assert_eq!(c["waiting_for_parents"], false);

    let human = tokio::task::spawn_blocking(move || run2(false))
        .await
        .expect("run");
    let human = String::from_utf8_lossy(&human);
    eprintln!("{human}");
    assert!(human.contains("live instances  instance-a"), "{human}");
    assert!(human.contains("finished"), "{human}");
    assert!(human.contains("ASSIGNED"), "{human}");
    common::delete_keys(&leases, &prefix).await;
}

/// Consumers whose lease store spreads a stream over slot buckets: `--slot-buckets` with their
/// number shows their leases; without it, mqctl refuses the stream and names both numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_leases_spread_over_slot_buckets() {
    let redis = match service_url("REDIS_URL") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let emu = Emulator::start().await;
    let stream = "mqctl-buckets";
    emu.create_stream(stream, 4).await;
    emu.wait_active(stream).await;
    let prefix = format!("mqctl-test-buckets-{}", std::process::id());
    let leases = RedisLeaseStore::connect(&redis, prefix.clone())
        .await
        .expect("redis")
        .slot_buckets(16)
        .expect("16 buckets");
    for i in 0..4 {
        leases
            .acquire(
                stream,
                &format!("shardId-00000000000{i}"),
                "instance-a",
                Duration::from_secs(60),
            )
            .await
            .expect("acquire")
            .expect("free");
    }
    let mut args = common::kinesis_args(
        &["status", "--stream", stream, "--json"],
        &redis,
        &prefix,
        &emu.endpoint,
    );
    let refused = args.clone();
    let out = tokio::task::spawn_blocking(move || {
        common::mqctl(&refused)
            .assert()
            .failure()
            .get_output()
            .stderr
            .clone()
    })
    .await
    .expect("run");
    let err = String::from_utf8_lossy(&out);
    assert!(
        err.contains("16 slot bucket(s)") && err.contains("set to 1"),
        "{err}"
    );
    args.extend(["--slot-buckets".to_owned(), "16".to_owned()]);
    let out = tokio::task::spawn_blocking(move || {
        common::mqctl(&args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    })
    .await
    .expect("run");
    let status: serde_json::Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
    let shards = status["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 4, "{status}");
    assert!(
        shards.iter().all(|s| s["owner"] == "instance-a"),
        "{status}"
    );
    common::delete_keys(&leases, &prefix).await;
}

/// Consumers whose leases live in a PostgreSQL lease table (`TableLeaseStore`): `--lease-url`
/// shows them without any Redis, `lease release --force` fences the owner in the table, and
/// `--checkpoint-url` beside it is refused (a lease table keeps its checkpoints itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_release_on_a_postgres_lease_table() {
    use std::sync::Arc;

    use mq::kinesis::TableLeaseStore;
    let pg = match service_url("MQ_TEST_POSTGRES_URL") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let emu = Emulator::start().await;
    let stream = "mqctl-lease-table";
    emu.create_stream(stream, 2).await;
    emu.wait_active(stream).await;
    let table = format!("mqt_cli_leases_{}", std::process::id());
    let leases = TableLeaseStore::new(Arc::new(
        mq::sql::PgLeaseTable::connect(&pg, table.clone())
            .await
            .expect("lease table"),
    ));
    let ttl = Duration::from_secs(60);
    leases
        .join(stream, "instance-a", "instance-a.1", ttl)
        .await
        .expect("join");
    let held = leases
        .acquire_as_member(
            stream,
            "shardId-000000000000",
            "instance-a",
            "instance-a.1",
            ttl,
            0,
        )
        .await
        .expect("acquire")
        .expect("free");
    leases
        .checkpoint(&held, "4959033827149025660855969253836")
        .await
        .expect("checkpoint");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = vec!["kinesis".into()];
        all.extend(extra.iter().map(|a| (*a).to_owned()));
        all.extend(
            [
                "--lease-url",
                &pg,
                "--lease-table",
                &table,
                "--endpoint-url",
                &emu.endpoint,
                "--region",
                "us-east-1",
            ]
            .map(str::to_owned),
        );
        all
    };
    let run = |args: Vec<String>, ok: bool| async move {
        tokio::task::spawn_blocking(move || {
            let mut cmd = common::mqctl(&args);
            cmd.env_remove("REDIS_URL");
            let out = if ok {
                cmd.assert().success()
            } else {
                cmd.assert().failure()
            };
            let out = out.get_output();
            (out.stdout.clone(), out.stderr.clone())
        })
        .await
        .expect("run")
    };
    let (out, _) = run(args(&["status", "--stream", stream, "--json"]), true).await;
    let status: serde_json::Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
    assert_eq!(status["live_instances"], serde_json::json!(["instance-a"]));
    let s0 = &status["shards"][0];
    assert_eq!(s0["owner"], "instance-a", "{status}");
    assert_eq!(s0["live"], true);
    assert_eq!(s0["checkpoint"], "4959033827149025660855969253836");

    run(
        args(&[
            "lease",
            "release",
            "--stream",
            stream,
            "--shard",
            "shardId-000000000000",
            "--force",
            "--yes",
        ]),
        true,
    )
    .await;
    let st = leases
        .state(stream, "shardId-000000000000")
        .await
        .expect("state");
    assert_eq!(
        (st.owner, st.epoch),
        (None, held.epoch + 1),
        "fenced and freed"
    );
    assert!(!leases.renew(&held, ttl).await.expect("renew"));

    let mut both = args(&["status", "--stream", stream]);
    both.extend(["--checkpoint-url".to_owned(), pg.clone()]);
    let (_, err) = run(both, false).await;
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("cannot be used together"), "{err}");

    let pool = sqlx::PgPool::connect(&pg).await.expect("pool");
    for t in [table.clone(), format!("{table}_versions")] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .execute(&pool)
            .await
            .expect("drop");
    }
}
