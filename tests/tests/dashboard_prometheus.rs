//! The Grafana dashboard and the PromQL of docs/metrics.md, evaluated by a real Prometheus that
//! scrapes the facade's `metrics_server` example: every expression must parse and run, and every
//! expression over metrics the example emits must return finite numbers.
//!
//! Needs the `prometheus` binary (`cargo xtask services up` installs it); without it the test
//! skips, or fails under `MQ_REQUIRE_SERVICES=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MQ_PROMETHEUS") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on `addr`; the body.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(dechunk(body));
    }
    Some(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `expr` on Prometheus at `addr`: the parsed response.
fn query(addr: &str, expr: &str) -> serde_json::Value {
    let body = get(addr, &format!("/api/v1/query?query={}", encode(expr)))
        .unwrap_or_else(|| panic!("no answer from prometheus for {expr}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The dashboard's expressions and the ```promql blocks of docs/metrics.md, with Grafana's
/// variables replaced the way Grafana would.
fn expressions() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/grafana/mq-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = target["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).expect("metrics.md");
    let mut in_block = false;
    for line in docs.lines() {
        match line.trim() {
            "```promql" => in_block = true,
            "```" => in_block = false,
            l if in_block && !l.is_empty() && !l.starts_with('#') => out.push(l.to_owned()),
            _ => {}
        }
    }
    out.iter()
        .map(|e| {
            e.replace("$queue", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
        })
        .collect()
}

/// The `mq_*` metric names an expression reads, without histogram suffixes.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("mq_") {
        let start = i + at;
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            let name = &expr[start..end];
            names.push(name.trim_end_matches("_bucket").to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn dashboard_and_documented_queries_run_on_prometheus() {
    let Some(prometheus) = prometheus_binary() else {
        let reason = "prometheus is not installed: run `cargo xtask services up`";
        if std::env::var("MQ_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("required service missing: {reason}");
        }
        eprintln!("skipping: {reason}");
        return;
    };
    let mut example = Command::new(env!("CARGO_BIN_EXE_metrics_server"))
        .env("MQ_METRICS_ADDR", "127.0.0.1:0")
        .env("MQ_DEMO_SECONDS", "120")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn metrics_server");
    let stdout = example.stdout.take().expect("stdout");
    let _example = Kill(example);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    let target = line
        .trim()
        .strip_prefix("serving http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let dir = std::env::temp_dir().join(format!("mq-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: mq\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("config");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let _prometheus = Kill(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus"),
    );

    // Wait (with a deadline) until Prometheus has scraped the example often enough for rates.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let samples = get(
            &addr,
            &format!(
                "/api/v1/query?query={}",
                encode("count_over_time(up{job=\"mq\"}[1m])")
            ),
        )
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        })
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
        if samples >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape {target} five times; its log: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let up = query(&addr, "up{job=\"mq\"}");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    let exposed = get(&target, "/metrics").expect("scrape the example");
    let emitted = |name: &str| exposed.lines().any(|l| l.starts_with(name));
    let exprs = expressions();
    assert!(exprs.len() >= 20, "found only {} expressions", exprs.len());
    let (mut with_data, mut without_data) = (0, Vec::new());
    for expr in &exprs {
        let answer = query(&addr, expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr} reads no mq metric");
        let kinesis_only = expr.contains("backend=\"kinesis\"");
        if names.iter().all(|n| emitted(n)) && !kinesis_only {
            let result = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(!result.is_empty(), "{expr} returned nothing: {answer}");
            for series in &result {
                let v: f64 = series["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                assert!(v.is_finite(), "{expr} returned {v} for {series}");
            }
            with_data += 1;
        } else {
            without_data.push(expr.clone());
        }
    }
    eprintln!(
        "{} expressions ran; {with_data} returned finite data from the memory example; {} read only Kinesis or dead-letter metrics: {without_data:#?}",
        exprs.len(),
        without_data.len()
    );
    assert!(with_data >= 10, "only {with_data} expressions had data");
    let _ = std::fs::remove_dir_all(&dir);
}
