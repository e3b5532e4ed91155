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

/// The `host:port` of every node a `redis-cluster://host:port?node=host:port&…` URL names.
pub fn cluster_nodes(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut nodes = vec![first.trim_end_matches('/').to_owned()];
    nodes.extend(
        query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("node="))
            .map(str::to_owned),
    );
    nodes
}

/// The keys matching `pattern` on one cluster node (`host:port`).
pub fn node_keys(node: &str, pattern: &str) -> Vec<String> {
    let (host, port) = node.rsplit_once(':').unwrap_or((node, "6379"));
    match std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "--scan", "--pattern", pattern])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Ok(out) => panic!(
            "scanning {node} for {pattern}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run redis-cli: {e}"),
    }
}

/// Deletes every key matching `pattern` on every node of the cluster at `url`, one key at a
/// time (the keys hash to many slots). Failures only print.
pub fn delete_matching_cluster(url: &str, pattern: &str) {
    use std::io::Write;
    for node in cluster_nodes(url) {
        let keys = node_keys(&node, pattern);
        if keys.is_empty() {
            continue;
        }
        let (host, port) = node.rsplit_once(':').unwrap_or((&node, "6379"));
        let child = std::process::Command::new("redis-cli")
            .args(["-h", host, "-p", port])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(mut child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    for k in &keys {
                        let _ = writeln!(stdin, "DEL \"{k}\"");
                    }
                }
                let _ = child.wait();
            }
            Err(e) => eprintln!("cleanup of {pattern} on {node}: cannot run redis-cli: {e}"),
        }
    }
}
