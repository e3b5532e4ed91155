//! Cross-crate integration suites live in this crate's tests/ folder.
