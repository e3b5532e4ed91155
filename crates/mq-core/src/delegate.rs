//! [`delegate_message_queue!`](crate::delegate_message_queue): a backend's queue type over the
//! polling runtime without hand-written forwarding.

/// Implements [`MessageQueue`](crate::MessageQueue) for a backend's queue type by forwarding every method to one of
/// its fields (usually a [`PollingQueue`](crate::backend::PollingQueue)), so a backend wraps the runtime in its own named type
/// without writing the forwarding by hand.
///
/// Generic parameters go in brackets after `impl`, bounds in brackets after `where`.
///
/// # Examples
///
/// ```
/// use mq_core::backend::PollingQueue;
/// # use mq_core::backend::{Claim, Claimed, Completion, Holder, QueueStore};
/// # use mq_core::{Message, QueueName};
/// # #[derive(Debug)]
/// # struct MyStore;
/// # #[mq_core::async_trait]
/// # impl QueueStore for MyStore {
/// #     fn backend(&self) -> &'static str { "mine" }
/// #     async fn register(&self, _: &QueueName) -> mq_core::Result<()> { Ok(()) }
/// #     async fn insert(&self, _: &QueueName, m: Vec<Message>) -> mq_core::Result<Vec<mq_core::Result<()>>> { Ok(m.iter().map(|_| Ok(())).collect()) }
/// #     async fn claim(&self, _: &QueueName, _: Holder<'_>, _: usize) -> mq_core::Result<Claimed> { Ok(Claimed::default()) }
/// #     async fn renew(&self, _: &QueueName, _: Holder<'_>, c: &[Claim]) -> mq_core::Result<Vec<Claim>> { Ok(c.to_vec()) }
/// #     async fn complete(&self, _: &QueueName, _: &str, _: Vec<Completion>) -> mq_core::Result<Vec<Claim>> { Ok(vec![]) }
/// # }
///
/// /// A queue over `MyStore`.
/// #[derive(Debug)]
/// pub struct MyQueue {
///     inner: PollingQueue<MyStore>,
/// }
///
/// mq_core::delegate_message_queue!(impl for MyQueue => inner);
/// ```
#[macro_export]
macro_rules! delegate_message_queue {
    (impl $([$($generics:tt)*])? for $ty:ty $(where [$($bounds:tt)*])? => $field:ident) => {
        #[$crate::async_trait]
        impl $(<$($generics)*>)? $crate::MessageQueue for $ty $(where $($bounds)*)? {
            fn backend(&self) -> &'static str {
                $crate::MessageQueue::backend(&self.$field)
            }

            async fn register(&self, queue: &$crate::QueueName) -> $crate::Result<()> {
                $crate::MessageQueue::register(&self.$field, queue).await
            }

            async fn publish(
                &self,
                queue: &$crate::QueueName,
                messages: ::std::vec::Vec<$crate::NewMessage>,
            ) -> $crate::Result<$crate::PublishReport> {
                $crate::MessageQueue::publish(&self.$field, queue, messages).await
            }

            async fn consume(
                &self,
                queue: &$crate::QueueName,
                handler: ::std::sync::Arc<dyn $crate::Handler>,
                options: $crate::ConsumerOptions,
            ) -> $crate::Result<$crate::ConsumerHandle> {
                $crate::MessageQueue::consume(&self.$field, queue, handler, options).await
            }

            async fn consume_batch(
                &self,
                queue: &$crate::QueueName,
                handler: ::std::sync::Arc<dyn $crate::Handler>,
                options: &$crate::ConsumerOptions,
            ) -> $crate::Result<$crate::BatchReport> {
                $crate::MessageQueue::consume_batch(&self.$field, queue, handler, options).await
            }

            async fn shutdown(&self) -> $crate::Result<()> {
                $crate::MessageQueue::shutdown(&self.$field).await
            }

            async fn cancel(
                &self,
                queue: &$crate::QueueName,
                target: $crate::CancelTarget,
            ) -> $crate::Result<$crate::CancelOutcome> {
                $crate::MessageQueue::cancel(&self.$field, queue, target).await
            }

            async fn pause(&self, queue: &$crate::QueueName) -> $crate::Result<()> {
                $crate::MessageQueue::pause(&self.$field, queue).await
            }

            async fn resume(&self, queue: &$crate::QueueName) -> $crate::Result<()> {
                $crate::MessageQueue::resume(&self.$field, queue).await
            }

            async fn is_paused(&self, queue: &$crate::QueueName) -> $crate::Result<bool> {
                $crate::MessageQueue::is_paused(&self.$field, queue).await
            }
        }
    };
}
