//! Removes the Redis keys a passing test left behind, so runs do not pile up keys.
#![allow(dead_code, unreachable_pub)]

/// Deletes every key matching `pattern` on the Redis at `REDIS_URL` (a test server: `KEYS` is
/// fine there). Failures only print: cleanup never fails a test that passed.
pub fn delete_matching(pattern: &str) {
    let Ok(url) = std::env::var("REDIS_URL") else {
        return;
    };
    delete_matching_on(&url, &[], pattern);
}

/// Deletes every key matching `pattern` on the Redis at `url`, with `redis-cli` options
/// `connect_args` (`--tls --cacert <file>` for a TLS server).
pub fn delete_matching_on(url: &str, connect_args: &[&str], pattern: &str) {
    let script = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                  redis.call('DEL', k) n = n + 1 end return n";
    match std::process::Command::new("redis-cli")
        .args(connect_args)
        .args(["-u", url, "EVAL", script, "0", pattern])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "cleanup of {pattern} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("cleanup of {pattern}: cannot run redis-cli: {e}"),
    }
}
