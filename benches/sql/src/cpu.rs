//! CPU time spent by this process and by the local database server (PostgreSQL or MariaDB/MySQL), from `/proc` (Linux, server
//! on the same machine). Throughput moves with whatever else the machine runs; CPU time per
//! message moves much less, so it shows where a design spends its work even on a busy machine.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time used so far: (this process, every `postgres`, `mariadbd` or `mysqld` process).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTime {
    pub(crate) client: Duration,
    pub(crate) server: Duration,
}

impl CpuTime {
    /// Now. Zero where `/proc` cannot be read (not Linux): the figures then read 0.
    pub(crate) fn now() -> CpuTime {
        let mut server = 0u64;
        let mut client = 0u64;
        let me = std::process::id().to_string();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str() else { continue };
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                let Some((comm, ticks)) = parse_stat(&stat) else {
                    continue;
                };
                if pid == me {
                    client += ticks;
                } else if matches!(comm, "postgres" | "mariadbd" | "mysqld") {
                    server += ticks;
                }
            }
        }
        CpuTime {
            client: ticks(client),
            server: ticks(server),
        }
    }

    /// CPU time used since `earlier` (processes that ended meanwhile are not counted).
    pub(crate) fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            client: self.client.saturating_sub(earlier.client),
            server: self.server.saturating_sub(earlier.server),
        }
    }
}

fn ticks(n: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / TICKS_PER_SECOND)
}

/// `(comm, utime + stime)` of one `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    // The command name sits in parentheses and may itself hold spaces or parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let rest: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line() {
        let line = "42 (postgres: x (y)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(line), Some(("postgres: x (y)", 10)));
    }
}
