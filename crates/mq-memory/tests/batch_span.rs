//! Handlers run inside an `mq.batch` span carrying the queue, the message ids and the messages'
//! `log_context`, on the polling path (`InMemoryQueue`) and the inline one (`ImmediateQueue`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mq_core::testkit::{eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn};
use mq_memory::{ImmediateQueue, InMemoryQueue};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

type Spans = Arc<Mutex<HashMap<u64, (String, HashMap<String, String>)>>>;

/// Records every span's name and fields by id.
#[derive(Clone, Default)]
struct SpanFields(Spans);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
    }
}

fn messages() -> Vec<NewMessage> {
    vec![
        NewMessage::new("welcome", serde_json::json!({"n": 1}))
            .id(mq_core::MessageId::new("m-1").unwrap())
            .log_context("tenant", "acme")
            .log_context("request", "r-9"),
        NewMessage::new("welcome", serde_json::json!({"n": 2}))
            .id(mq_core::MessageId::new("m-2").unwrap())
            .log_context("tenant", "acme"),
    ]
}

/// Consumes the two messages from `queue` and returns the fields of the span the handler ran in.
async fn handler_span(queue: Arc<dyn MessageQueue>) -> HashMap<String, String> {
    let spans = SpanFields::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let name = QueueName::new("emails").unwrap();
    queue.register(&name).await.unwrap();
    let seen: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
    let s = seen.clone();
    let consumer = queue
        .consume(
            &name,
            Arc::new(handler_fn(move |_b: Batch, _c: HandlerContext| {
                let s = s.clone();
                async move {
                    s.lock()
                        .unwrap()
                        .push(tracing::Span::current().id().map(|id| id.into_u64()));
                }
            })),
            fast_options().batch_size(10),
        )
        .await
        .unwrap();
    queue
        .publish(&name, messages())
        .await
        .unwrap()
        .into_result()
        .expect("every message stored");
    eventually(Duration::from_secs(5), "the batch is handled", || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    consumer.stop().await;
    let id = seen.lock().unwrap()[0].expect("the handler runs inside a span");
    let (span_name, fields) = spans
        .0
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .expect("span recorded");
    assert_eq!(span_name, "mq.batch");
    fields
}

#[tokio::test]
async fn polling_handlers_run_in_a_batch_span() {
    let fields = handler_span(Arc::new(InMemoryQueue::new(Default::default()))).await;
    assert_eq!(fields["queue"], "emails");
    assert_eq!(fields["backend"], "memory");
    assert_eq!(fields["size"], "2");
    assert_eq!(fields["message_ids"], "m-1,m-2");
    assert_eq!(fields["log_context"], "request=r-9 tenant=acme");
}

#[tokio::test]
async fn immediate_handlers_run_in_a_batch_span() {
    let fields = handler_span(Arc::new(ImmediateQueue::new(Default::default()))).await;
    assert_eq!(fields["backend"], "immediate");
    assert_eq!(fields["message_ids"], "m-1,m-2");
    assert_eq!(fields["log_context"], "request=r-9 tenant=acme");
}
