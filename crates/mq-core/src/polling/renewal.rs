//! The handler of a batch and the lease renewal beside it: the renewal keeps the batch's lease
//! while the handler runs, and tells a lost lease from a message the handler completed in its
//! own transaction.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::dead_letter::ErrorChain;
use crate::handler::{Batch, CompletedMarks};
use crate::message::Message;
use crate::runner::HandlerRun;
use crate::store::{Claim, QueueStore};

impl<S: QueueStore> Worker<S> {
    /// Runs the handler while [`Worker::renew`] keeps the lease beside it; returns the messages
    /// and what the handler said.
    pub(super) async fn run_handler(&self, messages: Vec<Message>) -> (Vec<Message>, HandlerRun) {
        let claims: Vec<Claim> = messages.iter().map(Claim::of).collect();
        let batch = Batch::from(messages);
        let lost = CancellationToken::new();
        let marks = CompletedMarks::default();
        let run = {
            let handler =
                self.runner
                    .run_marked(batch.clone(), &self.abort, Some(&lost), marks.clone());
            let renew = self.renew(claims, &lost, &marks);
            tokio::pin!(handler, renew);
            tokio::select! {
                run = &mut handler => run,
                () = &mut renew => handler.await,
            }
        };
        // Usually the handler has dropped its copy by now, so this moves instead of cloning.
        (batch.into_messages(), run)
    }

    /// Renews the lease of `claims` every third of its duration, in its own future beside the
    /// handler, so a slow renewal never pauses the handler. Each try may take only the time left
    /// on the lease we know we hold (minus a margin); when that runs out, or the store says the
    /// lease is gone, it cancels `lost` and returns, so the handler stops before another
    /// consumer can claim the batch. A message the handler completed in its own transaction
    /// (marked in `marks`) is no longer held, and that is no lost lease: it is left out of
    /// later renewals, and the renewal returns without cancelling once no message is left.
    /// Never returns otherwise.
    async fn renew(
        &self,
        mut claims: Vec<Claim>,
        lost: &CancellationToken,
        marks: &CompletedMarks,
    ) {
        let lease = self.options.get_lease_duration();
        // Stop this long before the lease may lapse: the handler needs up to its cancel grace
        // to stop, and the store's clock may run a little ahead of ours.
        let margin = (lease / 6).max(self.options.get_cancel_grace() + lease / 20);
        let started = Instant::now();
        let mut tick = tokio::time::interval_at(started + lease / 3, lease / 3);
        // The lease is ours until this instant; failed renewals do not move it.
        let mut held_until = started + lease;
        loop {
            let give_up = held_until.checked_sub(margin).unwrap_or(started);
            tokio::select! {
                _ = tick.tick() => {}
                () = tokio::time::sleep_until(give_up) => {
                    tracing::warn!(queue = %self.queue, consumer = %self.consumer_id,
                        "mq: lease about to lapse after failed renewals; cancelling the handler");
                    lost.cancel();
                    return;
                }
            }
            let asked = Instant::now();
            let budget = give_up.saturating_duration_since(asked);
            let renewed = tokio::time::timeout(
                budget,
                self.store.renew(&self.queue, self.holder(), &claims),
            )
            .await;
            let renewed =
                renewed.map(|r| r.map(|gone| without_completed(&mut claims, gone, marks)));
            match renewed {
                Ok(Ok(_)) if claims.is_empty() => return,
                Ok(Ok(gone)) if gone.is_empty() => held_until = asked + lease,
                Ok(Ok(gone)) => {
                    tracing::warn!(queue = %self.queue, consumer = %self.consumer_id, lost = gone.len(),
                        "mq: lease lost while the handler ran; cancelling it");
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(queue = %self.queue, consumer = %self.consumer_id,
                        error = %ErrorChain::from_error(&e), "mq: lease renewal failed; retrying");
                }
                Err(_) => {
                    tracing::warn!(queue = %self.queue, consumer = %self.consumer_id, waited = ?budget,
                        "mq: lease renewal did not answer before the lease may lapse; cancelling the handler");
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

/// The claims of `gone` the handler did not mark completed. Marked ones are dropped from
/// `claims` too: their rows are completed (or, when the handler's transaction rolled back after
/// its statement, were claimed again by now), so renewing them again can only fail.
fn without_completed(
    claims: &mut Vec<Claim>,
    gone: Vec<Claim>,
    marks: &CompletedMarks,
) -> Vec<Claim> {
    let marked = marks.lock().unwrap_or_else(|e| e.into_inner());
    if marked.is_empty() {
        return gone;
    }
    let (done, lost): (Vec<Claim>, Vec<Claim>) =
        gone.into_iter().partition(|c| marked.contains(&c.id));
    claims.retain(|c| !done.contains(c));
    lost
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageId;

    fn claim(id: &str) -> Claim {
        Claim::new(MessageId::new(id).expect("id"), 1)
    }

    #[test]
    fn a_completed_message_is_no_lost_lease() {
        let marks = CompletedMarks::default();
        let mut claims = vec![claim("a"), claim("b"), claim("c")];
        // Nothing marked: every refused claim is lost.
        assert_eq!(
            without_completed(&mut claims, vec![claim("a")], &marks),
            vec![claim("a")]
        );
        assert_eq!(claims.len(), 3);
        marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(MessageId::new("a").expect("id"));
        assert!(without_completed(&mut claims, vec![claim("a")], &marks).is_empty());
        assert_eq!(claims, vec![claim("b"), claim("c")]);
        // An unmarked refusal beside a marked one is still lost.
        assert_eq!(
            without_completed(&mut claims, vec![claim("b")], &marks),
            vec![claim("b")]
        );
    }
}
