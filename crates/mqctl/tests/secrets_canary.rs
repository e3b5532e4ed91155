//! A canary password in every connection URL never comes back out: not in the `Display` or
//! `Debug` of a queue, its options or an error, not in a log line (at TRACE, drivers included),
//! not in a metric label, and not in `mqctl`'s output. The URLs point at the test servers (a
//! wrong password, or one the server ignores), at a port where nothing listens, and at a host that
//! does not resolve.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mq::kinesis::RedisLeaseStore;
use mq::mongo::{MongoOptions, MongoQueue};
use mq::sql::{MySqlQueue, PgQueue, SqlOptions};
use mq::{CommonOptions, ErrorChain, LifecycleDispatcher, MessageQueue, NewMessage, QueueName};
use mq_core::testkit::service_url;

const CANARY: &str = "canary-Zq7xW3pT";
const BIN: &str = env!("CARGO_BIN_EXE_mqctl");

/// `url` with the canary as its password (and user `mq` when it names none).
fn with_canary(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((info, hosts)) => (info.split(':').next().unwrap_or("mq"), hosts),
        None => ("mq", authority),
    };
    format!("{scheme}://{user}:{CANARY}@{hosts}{tail}")
}

/// The canary URLs of one kind of server: the test server's (when its variable is set), a
/// refused port, a host that does not resolve, and the password as a query parameter.
fn urls(var: &str, scheme: &str, port: u16, query_password: bool) -> Vec<String> {
    let mut out = vec![
        format!("{scheme}://mq:{CANARY}@127.0.0.1:1/app"),
        format!("{scheme}://mq:{CANARY}@no-such-host.invalid:{port}/app"),
    ];
    if query_password {
        out.push(format!(
            "{scheme}://127.0.0.1:1/app?user=mq&password={CANARY}"
        ));
    }
    if let Ok(url) = service_url(var) {
        out.push(with_canary(&url));
    }
    out
}

/// Log lines, as the tracing subscriber writes them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything a connect attempt shows: the error's `Display`, chain and `Debug`, or the
/// queue's `Debug` after one published and consumed message (so metrics and logs have labels).
async fn shown<Q: MessageQueue + std::fmt::Debug>(
    result: Result<Q, impl std::error::Error + 'static>,
) -> String {
    match result {
        Err(e) => format!("{e} | {} | {e:?}", ErrorChain::from_error(&e)),
        Ok(queue) => {
            let name = QueueName::new("canary").expect("name");
            let mut text = format!("{queue:?}");
            if queue.register(&name).await.is_ok() {
                let report = queue
                    .publish(&name, vec![NewMessage::new("t", serde_json::json!({}))])
                    .await;
                text.push_str(&format!("{report:?}"));
            }
            let _ = queue.shutdown().await;
            text
        }
    }
}

fn common() -> CommonOptions {
    CommonOptions::default().lifecycle(
        LifecycleDispatcher::builder()
            .observer(Arc::new(mq::MetricsObserver::new()))
            .build(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_password_is_never_shown() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");

    let sql = || {
        SqlOptions::default()
            .table("mqt_canary")
            .connect_timeout(Duration::from_secs(3))
            .common(common())
    };
    let mut seen = Vec::new();
    seen.push(format!("{:?}", sql()));
    for url in urls("MQ_TEST_POSTGRES_URL", "postgres", 5432, true) {
        seen.push(shown(PgQueue::connect(&url, sql()).await).await);
    }
    for url in urls("MQ_TEST_MYSQL_URL", "mysql", 3306, false) {
        seen.push(shown(MySqlQueue::connect(&url, sql()).await).await);
    }
    let mongo = || {
        MongoOptions::default()
            .database("mq_canary")
            .server_selection_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .common(common())
    };
    seen.push(format!("{:?}", mongo()));
    for url in urls("MONGODB_URI", "mongodb", 27017, false) {
        seen.push(shown(MongoQueue::connect(&url, mongo()).await).await);
    }
    for url in urls("REDIS_URL", "redis", 6379, false) {
        // The client retries a refused connection; what it logs meanwhile counts as well.
        match tokio::time::timeout(
            Duration::from_secs(10),
            RedisLeaseStore::connect(&url, "mqtest-canary"),
        )
        .await
        {
            Ok(Ok(store)) => seen.push(format!("{store:?}")),
            Ok(Err(e)) => seen.push(format!("{e} | {} | {e:?}", ErrorChain::from_error(&e))),
            Err(_) => seen.push(format!("{url}: still connecting after 10 s")),
        }
    }

    for (i, text) in seen.iter().enumerate() {
        assert!(!text.contains(CANARY), "shown #{i}: {text}");
    }
    let logged =
        String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(!logged.is_empty(), "the drivers logged nothing: no capture");
    assert!(!logged.contains(CANARY), "in the logs:\n{logged}");
    let rendered = metrics.render();
    assert!(!rendered.contains(CANARY), "in the metrics:\n{rendered}");
}

/// Runs mqctl with `args`; its standard output and error together.
fn mqctl(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_remove("MQ_DLQ_URL")
        .env_remove("DATABASE_URL")
        .env_remove("MQ_QUEUE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("run mqctl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn mqctl_never_prints_the_canary_password() {
    let mut stores = urls("MQ_TEST_POSTGRES_URL", "postgres", 5432, true);
    stores.extend(urls("MQ_TEST_MYSQL_URL", "mysql", 3306, false));
    stores.push(format!(
        "mongodb://mq:{CANARY}@127.0.0.1:1/?serverSelectionTimeoutMS=1000"
    ));
    if let Ok(uri) = service_url("MONGODB_URI") {
        stores.push(with_canary(&uri));
    }
    for url in &stores {
        for args in [
            &["dlq", "--store-url", url, "list"][..],
            &["--json", "dlq", "--store-url", url, "list"],
            &["queue", "stats", "--url", url],
        ] {
            let out = mqctl(args);
            assert!(!out.contains(CANARY), "mqctl {args:?}:\n{out}");
        }
    }
    for url in urls("REDIS_URL", "redis", 6379, false) {
        let out = mqctl(&["kinesis", "--redis-url", &url, "status", "--stream", "s"]);
        assert!(!out.contains(CANARY), "mqctl kinesis with {url}:\n{out}");
    }
    // A durable checkpoint store is opened once the lease store answers.
    if let Ok(redis) = service_url("REDIS_URL") {
        let out = mqctl(&[
            "kinesis",
            "--redis-url",
            &redis,
            "--checkpoint-url",
            &format!("postgres://mq:{CANARY}@127.0.0.1:1/app"),
            "status",
            "--stream",
            "s",
        ]);
        assert!(
            !out.contains(CANARY),
            "mqctl kinesis checkpoint URL:\n{out}"
        );
    }
}
