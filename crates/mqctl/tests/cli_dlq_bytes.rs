//! `mqctl dlq show` on dead letters that keep a record's original bytes: it says they are kept
//! and how many there are, prints them when they are text (control characters escaped), and
//! gives them in base64 with `--json`; an entry without them shows no such line.

use std::process::Command;

use mq::sql::SqliteDeadLetterStore;
use mq::{
    DeadLetter, DeadLetterFilter, DeadLetterOrigin, DeadLetterStore, ErrorChain, Message,
    MessageId, QueueName,
};

const BIN: &str = env!("CARGO_BIN_EXE_mqctl");

/// Runs `mqctl dlq --store-url <url> show <id> [extra]`; returns its standard output.
fn show(url: &str, id: &str, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["dlq", "--store-url", url, "show", id])
        .args(extra)
        .env_remove("MQ_DLQ_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run mqctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn letter(id: &str, bytes: Option<&[u8]>) -> DeadLetter {
    let m = Message::new(
        MessageId::new(id).expect("id"),
        QueueName::new("events").expect("queue"),
        "poison",
        serde_json::json!({}),
        chrono::Utc::now(),
    );
    let origin = DeadLetterOrigin::shard("kinesis", "shardId-000000000000", "4959");
    let l = DeadLetter::new(m, origin, ErrorChain::msg("boom"), true, "w1");
    match bytes {
        Some(b) => l.original_bytes(b.to_vec()),
        None => l,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_tells_the_original_bytes() {
    let dir = std::env::temp_dir().join(format!("mqctl-dlq-bytes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("dlq.db");
    let _ = std::fs::remove_file(&path);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("sqlite");
    let store = SqliteDeadLetterStore::new(pool.clone(), "mq_dead_letters").expect("store");
    store.migrate().await.expect("migrate");
    let text = b"{ \"_id\": {\"$oid\": \"65f1\"},\n  \"type\": \"poison\" }\x1b[2J".to_vec();
    let binary = vec![0xff, 0x00, 0xfe];
    store
        .insert(vec![
            letter("text", Some(&text)),
            letter("binary", Some(&binary)),
            letter("plain", None),
        ])
        .await
        .expect("insert");
    let id_of = |entries: &[mq::DeadLetterEntry], m: &str| {
        entries
            .iter()
            .find(|e| e.message.id.as_str() == m)
            .map(|e| e.id.to_string())
            .expect("entry")
    };
    let entries = store
        .list(&DeadLetterFilter::default())
        .await
        .expect("list");
    let url = format!("sqlite://{}", path.display());

    let out = show(&url, &id_of(&entries, "text"), &[]);
    assert!(
        out.contains(&format!(
            "original bytes {} bytes, kept (UTF-8 text)",
            text.len()
        )),
        "{out}"
    );
    assert!(
        out.contains("{ \"_id\": {\"$oid\": \"65f1\"},\n  \"type\": \"poison\" }\\u{1b}[2J"),
        "{out}"
    );
    assert!(
        !out.contains('\u{1b}'),
        "no raw escape reaches the terminal: {out}"
    );

    let id = id_of(&entries, "binary");
    let out = show(&url, &id, &[]);
    assert!(
        out.contains("original bytes 3 bytes, kept (binary, shown in base64 by --json)"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&show(&url, &id, &["--json"])).expect("json");
    assert_eq!(json["original_bytes"], "/wD+", "{json}");

    let out = show(&url, &id_of(&entries, "plain"), &[]);
    assert!(!out.contains("original bytes"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&show(&url, &id_of(&entries, "plain"), &["--json"])).expect("json");
    assert!(json.get("original_bytes").is_none(), "{json}");
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
