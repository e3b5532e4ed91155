//! Messages a handler completed in its own transaction, as the lease renewal sees them.

use std::collections::HashSet;

use crate::handler::CompletedMarks;
use crate::message::MessageId;
use crate::store::Claim;

/// The claims of `gone` the handler did not mark completed. Marked ones are dropped from
/// `claims` too: their rows are completed (or, when the handler's transaction rolled back after
/// its statement, were claimed again by now), so renewing them again can only fail.
pub(super) fn without_completed(
    claims: &mut Vec<Claim>,
    gone: Vec<Claim>,
    marks: &CompletedMarks,
) -> Vec<Claim> {
    let marked: HashSet<MessageId> = marks.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
