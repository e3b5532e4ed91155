//! Runs the facade's `metrics_server` example, scrapes `/metrics` twice and checks the metric names and
//! that the counters move.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn example_binary() -> PathBuf {
    // The facade's `metrics_server` example, built as a binary of this crate.
    PathBuf::from(env!("CARGO_BIN_EXE_metrics_server"))
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn value(body: &str, metric: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn scrape_shows_metric_names_and_moving_counts() {
    let bin = example_binary();
    assert!(
        bin.exists(),
        "{} not built (cargo test builds examples)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .env("MQ_METRICS_ADDR", "127.0.0.1:0")
        .env("MQ_DEMO_SECONDS", "60")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let stdout = child.stdout.take().expect("stdout");
    let _guard = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    let addr = line
        .trim()
        .strip_prefix("serving http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let body = scrape(&addr);
        if value(&body, "mq_messages_acked_total") > 0.0 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no acked messages in time:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for name in [
        "mq_messages_published_total",
        "mq_messages_consumed_total",
        "mq_messages_acked_total",
        "mq_messages_retried_total",
        "mq_message_age_seconds",
        "mq_handler_duration_seconds",
        "mq_consumers",
    ] {
        assert!(first.contains(name), "{name} missing from:\n{first}");
    }
    let acked = value(&first, "mq_messages_acked_total");
    let later = loop {
        let body = scrape(&addr);
        if value(&body, "mq_messages_acked_total") > acked {
            break body;
        }
        assert!(Instant::now() < deadline, "counts did not move");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        value(&later, "mq_messages_published_total")
            >= value(&first, "mq_messages_published_total")
    );
    assert!(first.contains("queue=\"jobs\""), "labels carry the queue");
}
