//! The tables a test factory used, dropped when it goes away after passing cases.

#![allow(dead_code, unreachable_pub)]

use std::sync::Mutex;

use crate::support::{Db, drop_table};

/// Tables (with the URL that reaches them) to drop when this is dropped, unless a test failed:
/// a failed test keeps its tables for inspection.
#[derive(Debug, Default)]
pub struct DroppedTables(Mutex<Vec<(Db, String, String)>>);

impl DroppedTables {
    /// Drops `table` of `db` on `url` later.
    pub fn add(&self, db: Db, url: &str, table: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((
            db,
            url.to_owned(),
            table.to_owned(),
        ));
    }
}

impl Drop for DroppedTables {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let used: Vec<_> = self
            .0
            .lock()
            .map(|mut u| u.split_off(0))
            .unwrap_or_default();
        if used.is_empty() {
            return;
        }
        // Drop runs inside the test's runtime: clean up on a thread with its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    for (db, url, table) in used {
                        drop_table(db, &url, &table).await;
                    }
                });
            }
        })
        .join();
    }
}
