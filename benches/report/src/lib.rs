//! The one output convention of the mq benchmarks (`cargo xtask bench <name>`): each target on
//! its own line, as
//!
//! ```text
//! target <what>: <measured> <unit> (goal <= or >= <limit>) met|NOT met
//! ```
//!
//! # Examples
//!
//! ```
//! use mq_bench_report::{Goal, target_line};
//!
//! let line = target_line("queue time / bare time", 1.5, "x", Goal::AtMost(2.0));
//! assert_eq!(line, "target queue time / bare time: 1.50 x (goal <= 2) met");
//! ```

use std::fmt;

/// The limit a measurement must stay within.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// The measurement must be at most this (a time, a slowdown).
    AtMost(f64),
    /// The measurement must be at least this (a rate, a speed-up).
    AtLeast(f64),
}

impl Goal {
    /// True when `measured` meets the goal.
    pub fn is_met(self, measured: f64) -> bool {
        match self {
            Goal::AtMost(limit) => measured <= limit,
            Goal::AtLeast(limit) => measured >= limit,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::AtMost(limit) => write!(f, "goal <= {limit}"),
            Goal::AtLeast(limit) => write!(f, "goal >= {limit}"),
        }
    }
}

/// The line for one target.
pub fn target_line(what: &str, measured: f64, unit: &str, goal: Goal) -> String {
    let verdict = if goal.is_met(measured) {
        "met"
    } else {
        "NOT met"
    };
    // Two decimals for ratios and seconds; whole numbers for rates, where they are noise.
    let precision = if measured.abs() >= 100.0 { 0 } else { 2 };
    format!("target {what}: {measured:.precision$} {unit} ({goal}) {verdict}")
}

/// Prints the line for one target and returns whether it is met.
pub fn target(what: &str, measured: f64, unit: &str, goal: Goal) -> bool {
    println!("{}", target_line(what, measured, unit, goal));
    goal.is_met(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_whether_the_goal_is_met() {
        assert_eq!(
            target_line("rate", 90.0, "msg/s", Goal::AtLeast(100.0)),
            "target rate: 90.00 msg/s (goal >= 100) NOT met"
        );
        assert_eq!(
            target_line("rate", 120_000.4, "msg/s", Goal::AtLeast(100_000.0)),
            "target rate: 120000 msg/s (goal >= 100000) met"
        );
        assert_eq!(
            target_line("time", 0.25, "s", Goal::AtMost(0.2)),
            "target time: 0.25 s (goal <= 0.2) NOT met"
        );
    }
}
