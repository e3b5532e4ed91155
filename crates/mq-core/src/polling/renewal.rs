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

    /// Of `marked`, claims the handler marked completed, those its own transaction did
    /// complete, as the store says: a mark survives a rolled-back transaction. Should the store
    /// not answer, every mark is trusted.
    pub(super) async fn confirmed_completed(&self, marked: Vec<Claim>) -> Vec<Claim> {
        if marked.is_empty() {
            return marked;
        }
        match self
            .store
            .completed_by_delivery(&self.queue, &self.consumer_id, &marked)
            .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(queue = %self.queue, consumer = %self.consumer_id, error = %ErrorChain::from_error(&e),
                    "mq: could not check which messages the handler's transaction completed; trusting its marks");
                marked
            }
        }
    }

    /// The claims of `gone` that are lost leases. A claim the handler marked completed is no
    /// lost lease when its own transaction did complete it
    /// ([`confirmed_completed`](Self::confirmed_completed)); those are dropped from `claims`, as
    /// renewing them again can only fail.
    async fn without_completed(
        &self,
        claims: &mut Vec<Claim>,
        gone: Vec<Claim>,
        marks: &CompletedMarks,
    ) -> Vec<Claim> {
        let (marked, mut lost) = split_marked(gone, marks);
        if marked.is_empty() {
            return lost;
        }
        let done = self.confirmed_completed(marked.clone()).await;
        lost.extend(marked.into_iter().filter(|c| !done.contains(c)));
        claims.retain(|c| !done.contains(c));
        lost
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
            let renewed = match renewed {
                Ok(Ok(gone)) => Ok(Ok(self.without_completed(&mut claims, gone, marks).await)),
                other => other,
            };
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

/// Splits the refused claims `gone` into those the handler marked completed and the others.
fn split_marked(gone: Vec<Claim>, marks: &CompletedMarks) -> (Vec<Claim>, Vec<Claim>) {
    let marked = marks.lock().unwrap_or_else(|e| e.into_inner());
    if marked.is_empty() {
        return (Vec::new(), gone);
    }
    gone.into_iter().partition(|c| marked.contains(&c.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageId;

    fn claim(id: &str) -> Claim {
        Claim::new(MessageId::new(id).expect("id"), 1)
    }

    #[test]
    fn marked_claims_are_set_apart() {
        let marks = CompletedMarks::default();
        // Nothing marked: every refused claim is lost.
        assert_eq!(
            split_marked(vec![claim("a")], &marks),
            (vec![], vec![claim("a")])
        );
        marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(MessageId::new("a").expect("id"));
        // An unmarked refusal beside a marked one is still lost.
        assert_eq!(
            split_marked(vec![claim("a"), claim("b")], &marks),
            (vec![claim("a")], vec![claim("b")])
        );
    }
}
