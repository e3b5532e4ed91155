//! Lease renewal stalled by the network: a consumer whose database connection freezes (a proxy
//! that stops forwarding, as a paused server or a partition would) cancels its handler before
//! its lease can lapse, and drops it when it ignores the cancellation, so a second consumer on a
//! healthy connection never runs the message while the first still does.

#[path = "support/freezer.rs"]
mod freezer;
#[path = "support/factory.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mq_core::testkit::{DeliveryLedger, fast_options};
use mq_core::{Batch, CommonOptions, HandlerContext, NewMessage, QueueName, handler_fn};
use support::{Db, connect_queue, drop_table, fresh_table, options, wait_until};

/// `url` with its host and port replaced by `addr`, and the `host:port` it named.
fn through(url: &str, addr: SocketAddr, default_port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    let upstream = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    (format!("{scheme}://{user}{addr}{tail}"), upstream)
}

/// Ends a run in the ledger when the handler returns or is dropped.
struct Running(Arc<DeliveryLedger>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.end(&self.1);
    }
}

async fn stalled_connection(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "rs", test).await else {
        return;
    };
    let default_port = if db == Db::Postgres { 5432 } else { 3306 };
    let name = QueueName::new("stall").expect("name");
    for ignores_token in [false, true] {
        let (_, upstream) = through(&url, "127.0.0.1:1".parse().expect("addr"), default_port);
        let proxy = freezer::Freezer::start(upstream).await;
        let (proxied, _) = through(&url, proxy.addr, default_port);
        let common = CommonOptions::default();
        let healthy = connect_queue(db, &url, options(&table), common.clone()).await;
        let frozen = connect_queue(db, &proxied, options(&table), common).await;
        healthy.register(&name).await.expect("register");
        frozen.register(&name).await.expect("register");
        let report = healthy
            .publish(
                &name,
                vec![NewMessage::new("slow", serde_json::Value::Null)],
            )
            .await
            .expect("publish");
        let id = report.published[0].to_string();
        let ledger = Arc::new(DeliveryLedger::default());
        let l = ledger.clone();
        let handler = Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
            let l = l.clone();
            async move {
                let id = batch[0].id.to_string();
                l.begin(&id);
                let _running = Running(l.clone(), id);
                // Works for 6 s, well past the 1.5 s lease; stops early when asked unless it
                // ignores its token.
                let work = tokio::time::sleep(Duration::from_secs(6));
                if ignores_token {
                    work.await;
                } else {
                    tokio::select! {
                        () = work => {}
                        () = ctx.cancelled() => {}
                    }
                }
            }
        }));
        let opts = fast_options()
            .lease_duration(Duration::from_millis(1500))
            .cancel_grace(Duration::from_millis(100))
            .retry(mq_core::RetryPolicy::default().base_delay(Duration::from_millis(10)));
        let first = frozen
            .consume(&name, handler.clone(), opts.clone())
            .await
            .expect("consume");
        wait_until(Duration::from_secs(20), "the first delivery runs", || {
            let l = ledger.clone();
            async move { l.distinct() == 1 }
        })
        .await;
        proxy.freeze(true);
        let second = healthy
            .consume(&name, handler, opts)
            .await
            .expect("consume");
        wait_until(Duration::from_secs(30), "a second delivery", || {
            let (l, id) = (ledger.clone(), id.clone());
            async move { l.deliveries_of(&id) >= 2 }
        })
        .await;
        proxy.freeze(false);
        second.stop().await;
        first.stop().await;
        eprintln!(
            "{db:?} ignores_token={ignores_token}: deliveries {}, overlapping runs {}",
            ledger.deliveries_of(&id),
            ledger.overlaps()
        );
        assert_eq!(
            ledger.overlaps(),
            0,
            "{db:?}: the message ran on two consumers at once (ignores_token={ignores_token})"
        );
        healthy.shutdown().await.expect("shutdown");
        frozen.shutdown().await.expect("shutdown");
        drop_table(db, &url, &table).await;
    }
}

mod renewal_stall {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        stalled_connection(Db::Postgres, "renewal_stall").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        stalled_connection(Db::MySql, "renewal_stall").await;
    }
}
