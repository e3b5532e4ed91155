//! The lease-store conformance suite as a Redis ACL user that has only what
//! `docs/security.md` grants: the rule is read from that document, so the documented rule is
//! the one tested. A command the store needs and the rule lacks fails the suite with NOPERM.

#[path = "common/redis_keys.rs"]
mod redis_keys;
#[path = "common/redis_store.rs"]
mod redis_store;

use std::sync::Arc;

use mq_core::testkit::service_url;
use mq_kinesis::testkit::LeaseStoreFactory;
use mq_kinesis::{LeaseStore, RedisLeaseStore};

const USER: &str = "mqtest-leases";
const PASSWORD: &str = "mqtest-acl-password";
/// The start of every case's key prefix (`mqtest-acl:<case>`); the documented `~mq:*` becomes
/// `~mqtest-acl:*`.
const PREFIX: &str = "mqtest-acl";

/// The rules of docs/security.md's `ACL SETUSER` (the words after the user name), for the test
/// password and prefix.
fn documented_rule() -> Vec<String> {
    let doc = include_str!("../../../docs/security.md");
    let start = doc
        .find("ACL SETUSER")
        .expect("docs/security.md has an ACL SETUSER rule");
    let end = doc[start..].find("```").map_or(doc.len(), |i| start + i);
    doc[start..end]
        .split_whitespace()
        .skip(3)
        .map(|w| match w {
            w if w.starts_with('>') => format!(">{PASSWORD}"),
            "~mq:*" => format!("~{PREFIX}:*"),
            w => w.to_owned(),
        })
        .collect()
}

/// Creates (or resets) the ACL user on the Redis at `url`, once per test binary.
fn create_user(url: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| set_user(url));
}

fn set_user(url: &str) {
    let rule = documented_rule();
    assert!(
        rule.iter().any(|w| w == "-@all"),
        "the rule starts from nothing: {rule:?}"
    );
    let out = std::process::Command::new("redis-cli")
        .args(["-u", url, "ACL", "SETUSER", USER, "reset"])
        .args(&rule)
        .output()
        .expect("run redis-cli");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.trim() == "OK",
        "ACL SETUSER {rule:?}: {reply}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `url` logged in as the ACL user.
fn as_user(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a redis:// URL");
    let hosts = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{USER}:{PASSWORD}@{hosts}")
}

struct AclUser;

#[mq_core::async_trait]
impl LeaseStoreFactory for AclUser {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let url = service_url("REDIS_URL").map(|url| {
            create_user(&url);
            as_user(&url)
        });
        redis_store::connect_or_skip(test, url, format!("{PREFIX}:{test}")).await
    }

    async fn cleanup(&self, test: &str) {
        redis_keys::delete_matching(&format!("{PREFIX}:{test}:*"));
    }
}

mod acl_user {
    mq_kinesis::lease_store_tests!(super::AclUser);
}

#[tokio::test]
async fn keys_outside_the_prefix_are_refused() {
    let Ok(url) = service_url("REDIS_URL") else {
        return eprintln!("skipping: REDIS_URL is not set");
    };
    create_user(&url);
    let store = RedisLeaseStore::connect(&as_user(&url), "elsewhere")
        .await
        .expect("connecting needs no key");
    let e = store
        .acquire("s", "shard-0", "me", std::time::Duration::from_secs(5))
        .await
        .expect_err("keys outside ~mqtest-acl:* are not this user's");
    assert!(format!("{e:?}").contains("NOPERM"), "{e:?}");
}
