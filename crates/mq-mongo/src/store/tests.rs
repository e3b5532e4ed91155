use chrono::Utc;
use mq_core::{Error, MessageId};

use super::claim::{keep_what_was_claimed, pick_from_window};
use super::*;

fn message(id: &str) -> Message {
    let queue = QueueName::new("jobs").expect("queue name");
    let id = MessageId::new(id).expect("id");
    Message::new(id, queue, "t", serde_json::Value::Null, Utc::now())
}

fn failure() -> Error {
    Error::invalid_option("test", "a failing step")
}

#[test]
fn a_failed_expiry_sweep_keeps_the_claimed_batch() {
    let queue = QueueName::new("jobs").expect("queue name");
    let claimed = join_claim(
        &queue,
        Err(failure()),
        Ok(Taken {
            messages: vec![message("m1"), message("m2")],
            undecodable: Vec::new(),
        }),
    )
    .expect("the claim succeeded; only the sweep failed");
    assert_eq!(claimed.messages.len(), 2);
    assert!(claimed.expired.is_empty());
    assert!(join_claim(&queue, Ok(vec![message("e1")]), Err(failure())).is_err());
}

#[test]
fn a_window_pick_keeps_priority_order() {
    let id = |i: usize| Bson::String(format!("m{i}"));
    let window: Vec<(Bson, i32)> = [5, 5, 3, 3, 3, 3, 0, 0]
        .into_iter()
        .enumerate()
        .map(|(i, p)| (id(i), p))
        .collect();
    for _ in 0..20 {
        let picked = pick_from_window(window.clone(), 4);
        assert_eq!(picked.len(), 4);
        assert_eq!(
            picked[..2],
            [id(0), id(1)],
            "the higher priority is taken whole"
        );
        assert!(
            picked[2..]
                .iter()
                .all(|p| window[2..6].iter().any(|(w, _)| w == p))
        );
        assert!(picked[2] != picked[3]);
    }
    assert_eq!(pick_from_window(window[..3].to_vec(), 4).len(), 3);
}

/// Stores on hosts whose clocks are an hour fast and an hour slow, and one whose clock is
/// right, share a queue: nothing is delivered early or late, no running lease is taken over.
#[tokio::test]
async fn a_skewed_host_clock_moves_no_work_early_or_late() {
    let url = match mq_core::testkit::service_url("MONGODB_URI") {
        Ok(u) => u,
        Err(reason) => {
            eprintln!("skipping a_skewed_host_clock_moves_no_work_early_or_late: {reason}");
            return;
        }
    };
    let client = Client::with_uri_str(&url).await.expect("client");
    let db = "mqt_unit_skewed_host_clock";
    client
        .database(db)
        .drop()
        .await
        .expect("drop the test's database");
    let options = MongoOptions::default()
        .database(db)
        .change_stream(false)
        .sweep_interval(Duration::ZERO);
    let store = |skew: chrono::Duration| {
        let s = MongoStore::new(client.clone(), options.clone());
        *s.clock.skew.lock().unwrap() = skew;
        s
    };
    let (fast, slow, right) = (
        store(chrono::Duration::hours(1)),
        store(chrono::Duration::hours(-1)),
        store(chrono::Duration::zero()),
    );
    for s in [&fast, &slow, &right] {
        s.prepare_schema().await.expect("schema");
    }
    let queue = QueueName::new("jobs").expect("queue name");
    let lease = Duration::from_secs(60);
    let at = |s: &MongoStore, id: &str, delay: chrono::Duration| {
        let id = MessageId::new(id).expect("id");
        let mut m = Message::new(
            id,
            queue.clone(),
            "t",
            serde_json::Value::Null,
            s.clock.local(),
        );
        m.execute_at += delay;
        m
    };

    // Published "now" by the fast host: due now, not an hour late.
    let stored = fast
        .insert(&queue, vec![at(&fast, "due-now", chrono::Duration::zero())])
        .await;
    assert!(stored.expect("insert").iter().all(Result::is_ok));
    // Due within the error of the two offset measurements (milliseconds), not in an hour.
    let deadline = Instant::now() + Duration::from_secs(5);
    let claimed = loop {
        let claimed = right
            .claim(&queue, Holder::new("right", lease), 10)
            .await
            .expect("claim");
        if !claimed.messages.is_empty() || Instant::now() > deadline {
            break claimed;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        claimed.messages.len(),
        1,
        "a message published now is due now"
    );
    right
        .complete(
            &queue,
            "right",
            vec![Completion::new(
                Claim::of(&claimed.messages[0]),
                CompletionAction::Ack,
            )],
        )
        .await
        .expect("ack");

    // Delayed half an hour by the slow host: not due yet, not half an hour early.
    let stored = slow
        .insert(
            &queue,
            vec![at(&slow, "in-30-min", chrono::Duration::minutes(30))],
        )
        .await;
    assert!(stored.expect("insert").iter().all(Result::is_ok));
    let claimed = right
        .claim(&queue, Holder::new("right", lease), 10)
        .await
        .expect("claim");
    assert!(
        claimed.messages.is_empty(),
        "delivered early: {:?}",
        claimed.messages
    );

    // Leased for a minute by the slow host: nobody takes it over meanwhile.
    let stored = right
        .insert(&queue, vec![at(&right, "leased", chrono::Duration::zero())])
        .await;
    assert!(stored.expect("insert").iter().all(Result::is_ok));
    let held = slow
        .claim(&queue, Holder::new("slow", lease), 10)
        .await
        .expect("claim");
    assert_eq!(held.messages.len(), 1);
    let stolen = right
        .claim(&queue, Holder::new("right", lease), 10)
        .await
        .expect("claim");
    assert!(
        stolen.messages.is_empty(),
        "a running lease was taken over: {:?}",
        stolen.messages
    );
    let lost = slow
        .renew(
            &queue,
            Holder::new("slow", lease),
            &[Claim::of(&held.messages[0])],
        )
        .await
        .expect("renew");
    assert!(lost.is_empty(), "the slow host lost its own lease");
}

#[test]
fn a_later_failed_claim_step_keeps_what_was_taken() {
    let queue = QueueName::new("jobs").expect("queue name");
    assert!(keep_what_was_claimed(&queue, 3, failure()).is_ok());
    assert!(keep_what_was_claimed(&queue, 0, failure()).is_err());
}
