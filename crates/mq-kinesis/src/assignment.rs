//! Which instance reads which shard: a balanced, sticky assignment every instance computes alike.
//!
//! The original handed out contiguous blocks (4 shards over 3 instances gave 2, 2 and 0) and
//! moved most shards whenever the membership changed. [`balanced_assignment`] gives every
//! instance ⌊S/N⌋ or ⌈S/N⌉ shards and keeps each shard where it is whenever that stays balanced,
//! so a join or a departure moves only the shards it has to. It is a pure function of its inputs:
//! every instance that sees the same membership and the same lease owners computes the same map,
//! which is what lets them agree without talking to each other.
//!
//! [`eligible_shards`] decides which shards may be read at all after resharding: never a finished
//! shard, and a child only once every parent still in the listing is finished.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A shard as listed by Kinesis, with its lineage.
///
/// # Examples
///
/// ```
/// use mq_kinesis::ShardLineage;
///
/// let child = ShardLineage::new("shardId-000000000002").parent("shardId-000000000000");
/// assert_eq!(child.parents(), ["shardId-000000000000"]);
/// ```
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ShardLineage {
    id: String,
    parents: Vec<String>,
    closed: bool,
}

impl ShardLineage {
    /// An open shard without parents.
    pub fn new(id: impl Into<String>) -> Self {
        ShardLineage {
            id: id.into(),
            parents: Vec::new(),
            closed: false,
        }
    }
    /// Adds a parent (the split parent, or either side of a merge).
    pub fn parent(mut self, id: impl Into<String>) -> Self {
        self.parents.push(id.into());
        self
    }
    /// Marks the shard closed (it has an ending sequence number: no new records arrive).
    pub fn closed(mut self, closed: bool) -> Self {
        self.closed = closed;
        self
    }
    /// The shard id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The parent shard ids.
    pub fn parents(&self) -> &[String] {
        &self.parents
    }
    /// True when the shard is closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// The shards that may be read now, sorted: not finished, and every parent that is still in the
/// listing finished (a parent that aged out of the stream's retention has nothing left to read).
///
/// Reading a child only after its parents keeps the order of a partition key across a split or a
/// merge: every record of the key in a parent comes before any in the child.
///
/// # Examples
///
/// ```
/// use std::collections::HashSet;
/// use mq_kinesis::{ShardLineage, eligible_shards};
///
/// let listing = [
///     ShardLineage::new("p").closed(true),
///     ShardLineage::new("c1").parent("p"),
///     ShardLineage::new("c2").parent("p"),
/// ];
/// assert_eq!(eligible_shards(&listing, &HashSet::new()), ["p"]);
/// let finished: HashSet<String> = ["p".to_owned()].into();
/// assert_eq!(eligible_shards(&listing, &finished), ["c1", "c2"]);
/// ```
pub fn eligible_shards(listing: &[ShardLineage], finished: &HashSet<String>) -> Vec<String> {
    let listed: HashSet<&str> = listing.iter().map(|s| s.id.as_str()).collect();
    let mut out: Vec<String> = listing
        .iter()
        .filter(|s| !finished.contains(&s.id))
        .filter(|s| {
            s.parents
                .iter()
                .all(|p| finished.contains(p) || !listed.contains(p.as_str()))
        })
        .map(|s| s.id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The shards that count as read to their end: those marked `finished` in the store, and the
/// parents of every shard in `known` (the shards the store has a record of), since a child is
/// read only once its parents were finished, and a parent's record is forgotten after its
/// children started.
pub(crate) fn finished_shards(
    listing: &[ShardLineage],
    finished: impl IntoIterator<Item = String>,
    known: &HashSet<String>,
) -> HashSet<String> {
    let mut out: HashSet<String> = finished.into_iter().collect();
    for s in listing.iter().filter(|s| known.contains(&s.id)) {
        out.extend(s.parents.iter().cloned());
    }
    out
}

/// The finished shards of `finished` whose records the store may forget: every child of theirs
/// in `listing` has a record in `known` (so the children were started), or the shard is not
/// listed any more (Kinesis dropped it after the retention period). `listing` must be a
/// successful listing.
pub(crate) fn forgettable_shards(
    listing: &[ShardLineage],
    finished: &HashSet<String>,
    known: &HashSet<String>,
) -> Vec<String> {
    let mut out: Vec<String> = finished
        .iter()
        .filter(|f| known.contains(*f))
        .filter(|f| {
            let mut children = listing.iter().filter(|s| s.parents.contains(f)).peekable();
            let listed = listing.iter().any(|s| &&s.id == f);
            !listed || (children.peek().is_some() && children.all(|c| known.contains(&c.id)))
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// Which shards each instance should hold: instance → shards, with an entry for every instance.
pub type Assignment = BTreeMap<String, BTreeSet<String>>;

/// A balanced assignment of `shards` to `instances` that keeps shards with their current owner
/// where it can.
///
/// - Balanced: every instance gets ⌊S/N⌋ or ⌈S/N⌉ shards, so no instance holds more than one
///   shard above another.
/// - Sticky: a shard stays with its owner in `current` (shard → instance) as long as that owner
///   is in `instances` and under its share; the instances that already hold the most get the
///   ⌈S/N⌉ shares, so a membership change moves as few shards as possible.
/// - Deterministic: the result depends only on the inputs (not on their order), so every
///   instance computes the same map from the same view.
///
/// Owners in `current` that are not in `instances`, and shards in `current` that are not in
/// `shards`, are ignored.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use mq_kinesis::balanced_assignment;
///
/// let shards: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
/// let instances = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
/// let a = balanced_assignment(&instances, &shards, &BTreeMap::new());
/// let counts: Vec<usize> = a.values().map(|s| s.len()).collect();
/// assert_eq!(counts, [2, 1, 1]); // the original gave 2, 2, 0
/// ```
pub fn balanced_assignment(
    instances: &[String],
    shards: &[String],
    current: &BTreeMap<String, String>,
) -> Assignment {
    let members: BTreeSet<&str> = instances.iter().map(String::as_str).collect();
    let mut out: Assignment = members
        .iter()
        .map(|i| ((*i).to_owned(), BTreeSet::new()))
        .collect();
    let all: BTreeSet<&str> = shards.iter().map(String::as_str).collect();
    if members.is_empty() || all.is_empty() {
        return out;
    }
    let n = members.len();
    let floor = all.len() / n;
    let extra = all.len() % n;

    // what each live owner holds now, among the shards to assign
    let mut held: HashMap<&str, Vec<&str>> = HashMap::new();
    for (shard, owner) in current {
        if all.contains(shard.as_str()) && members.contains(owner.as_str()) {
            held.entry(owner.as_str()).or_default().push(shard.as_str());
        }
    }
    // The ⌈S/N⌉ shares go to the instances holding the most now (ties by name), so the fewest
    // shards have to move.
    let mut by_load: Vec<&str> = members.iter().copied().collect();
    by_load.sort_by(|a, b| {
        let (la, lb) = (
            held.get(a).map_or(0, Vec::len),
            held.get(b).map_or(0, Vec::len),
        );
        lb.cmp(&la).then(a.cmp(b))
    });
    let capacity: HashMap<&str, usize> = by_load
        .iter()
        .enumerate()
        .map(|(rank, i)| (*i, floor + usize::from(rank < extra)))
        .collect();

    let mut placed: HashSet<&str> = HashSet::new();
    for i in &members {
        let mut mine = held.get(i).cloned().unwrap_or_default();
        mine.sort_unstable();
        for shard in mine.into_iter().take(capacity[i]) {
            placed.insert(shard);
            if let Some(set) = out.get_mut(*i) {
                set.insert(shard.to_owned());
            }
        }
    }
    // the rest, in shard order, to whoever has the most room left (ties by name)
    for shard in all.iter().filter(|s| !placed.contains(*s)) {
        let target = members
            .iter()
            .filter(|i| out.get(**i).map_or(0, BTreeSet::len) < capacity[**i])
            .max_by(|a, b| {
                let room = |i: &str| capacity[i] - out.get(i).map_or(0, BTreeSet::len);
                room(a).cmp(&room(b)).then(b.cmp(a))
            });
        if let Some(i) = target
            && let Some(set) = out.get_mut(*i)
        {
            set.insert((*shard).to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_parent_counts_as_finished_once_a_child_has_a_record_and_is_forgotten_then() {
        let listing = [
            ShardLineage::new("p").closed(true),
            ShardLineage::new("c1").parent("p"),
            ShardLineage::new("c2").parent("p"),
            ShardLineage::new("q").closed(true),
        ];
        let known =
            |ids: &[&str]| -> HashSet<String> { ids.iter().map(|s| (*s).to_owned()).collect() };
        // p finished, one child started: not forgotten yet
        let k = known(&["p", "c1"]);
        let f = finished_shards(&listing, ["p".to_owned()], &k);
        assert!(f.contains("p"));
        assert!(forgettable_shards(&listing, &f, &k).is_empty());
        // both children started: forgotten; and still finished without its record
        let k = known(&["p", "c1", "c2"]);
        let f = finished_shards(&listing, ["p".to_owned()], &k);
        assert_eq!(forgettable_shards(&listing, &f, &k), ["p"]);
        let k = known(&["c1", "c2"]);
        let f = finished_shards(&listing, Vec::new(), &k);
        assert_eq!(eligible_shards(&listing, &f), ["c1", "c2", "q"]);
        // a finished shard without children is kept while it is listed, forgotten after
        let k = known(&["q"]);
        let f = finished_shards(&listing, ["q".to_owned()], &k);
        assert!(forgettable_shards(&listing, &f, &k).is_empty());
        let f = finished_shards(&listing[..3], ["q".to_owned()], &k);
        assert_eq!(forgettable_shards(&listing[..3], &f, &k), ["q"]);
    }

    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn owners(a: &Assignment) -> BTreeMap<String, String> {
        a.iter()
            .flat_map(|(i, s)| s.iter().map(move |s| (s.clone(), i.clone())))
            .collect()
    }

    fn moved(before: &BTreeMap<String, String>, after: &Assignment) -> usize {
        let after = owners(after);
        before
            .iter()
            .filter(|(s, o)| after.get(*s).is_some_and(|n| n != *o))
            .count()
    }

    fn check_balanced(a: &Assignment, shards: usize, case: &str) {
        let counts: Vec<usize> = a.values().map(BTreeSet::len).collect();
        let (min, max) = (
            counts.iter().copied().min().unwrap_or(0),
            counts.iter().copied().max().unwrap_or(0),
        );
        assert!(max - min <= 1, "{case}: unbalanced {counts:?}");
        assert_eq!(
            counts.iter().sum::<usize>(),
            shards,
            "{case}: every shard once"
        );
        let distinct: BTreeSet<&String> = a.values().flatten().collect();
        assert_eq!(distinct.len(), shards, "{case}: no shard twice");
    }

    /// One scenario, as (name, shards_before, before, shards_after, after, max_moves,
    /// counts_after): a settled assignment of `shards_before` shards to `before` instances, then
    /// the membership becomes `after` and the shard count `shards_after`; at most `max_moves`
    /// shards may change owner, and the instances hold `counts_after` shards (most first).
    type Case = (
        &'static str,
        usize,
        usize,
        usize,
        &'static [&'static str],
        usize,
        &'static [usize],
    );

    // one row a scenario, aligned as a table
    #[rustfmt::skip]
    const CASES: &[Case] = &[
        ("4 shards over 3 instances: 2/1/1, not 2/2/0",              4, 3,   4, &["i0", "i1", "i2"],                                0, &[2, 1, 1]),
        ("8 shards, 3 instances, a 4th joins: it takes 2, 2 move",   8, 3,   8, &["i0", "i1", "i2", "i3"],                          2, &[2, 2, 2, 2]),
        ("8 shards, 4 instances, one leaves: only its 2 move",       8, 4,   8, &["i0", "i1", "i2"],                                0, &[3, 3, 2]),
        ("8 shards, 3 instances, the one with 3 leaves",             8, 3,   8, &["i1", "i2"],                                      0, &[4, 4]),
        ("more instances than shards: two idle",                     3, 3,   3, &["i0", "i1", "i2", "i3", "i4"],                    0, &[1, 1, 1, 0, 0]),
        ("a shard closes and is finished: the rest stay put",        6, 3,   5, &["i0", "i1", "i2"],                                0, &[2, 2, 1]),
        ("a split adds two children: they go to the least loaded",   4, 2,   6, &["i0", "i1"],                                      0, &[3, 3]),
        ("everyone replaced at once (rolling restart worst case)",   8, 3,   8, &["j0", "j1", "j2"],                                0, &[3, 3, 2]),
        ("100 shards, 7 instances, an 8th joins",                  100, 7, 100, &["i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7"], 12, &[13, 13, 13, 13, 12, 12, 12, 12]),
        ("no instances: nothing assigned",                           4, 1,   4, &[],                                                0, &[]),
    ];

    #[test]
    fn scenarios() {
        for &(name, shards_before, before, shards_after, after, max_moves, counts_after) in CASES {
            let shard_names = names("s", shards_before);
            let first = balanced_assignment(&names("i", before), &shard_names, &BTreeMap::new());
            check_balanced(&first, shards_before, name);
            // closing shards drops the highest ids, splitting adds new ones
            let shard_names = names("s", shards_after);
            let after: Vec<String> = after.iter().map(|s| (*s).to_owned()).collect();
            let current = owners(&first);
            let second = balanced_assignment(&after, &shard_names, &current);
            if after.is_empty() {
                assert!(second.is_empty(), "{name}");
                continue;
            }
            check_balanced(&second, shards_after, name);
            let mut counts: Vec<usize> = second.values().map(BTreeSet::len).collect();
            counts.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(counts, counts_after, "{name}");
            // moves among shards whose owner is still a member (a departed owner's must move)
            let kept: BTreeMap<String, String> = current
                .into_iter()
                .filter(|(s, o)| after.contains(o) && shard_names.contains(s))
                .collect();
            let m = moved(&kept, &second);
            assert!(m <= max_moves, "{name}: {m} moves > {max_moves}");
        }
    }

    #[test]
    fn every_instance_computes_the_same_map_whatever_the_input_order() {
        let shards = names("s", 11);
        let mut instances = names("i", 4);
        let current: BTreeMap<String, String> = [("s3", "i2"), ("s4", "i2"), ("s9", "i0")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        let one = balanced_assignment(&instances, &shards, &current);
        instances.reverse();
        let mut rev_shards = shards.clone();
        rev_shards.reverse();
        assert_eq!(one, balanced_assignment(&instances, &rev_shards, &current));
        check_balanced(&one, 11, "order");
        // the current owners keep their shards
        assert!(one["i2"].contains("s3") && one["i2"].contains("s4"));
        assert!(one["i0"].contains("s9"));
    }

    #[test]
    fn an_overloaded_owner_gives_up_only_its_surplus() {
        let shards = names("s", 6);
        let instances = names("i", 3);
        // i0 held everything (it was alone)
        let current: BTreeMap<String, String> = shards
            .iter()
            .map(|s| (s.clone(), "i0".to_owned()))
            .collect();
        let a = balanced_assignment(&instances, &shards, &current);
        check_balanced(&a, 6, "surplus");
        assert_eq!(moved(&current, &a), 4);
        assert_eq!(a["i0"].len(), 2);
    }

    #[test]
    fn stale_owners_and_unknown_shards_are_ignored() {
        let shards = names("s", 2);
        let current: BTreeMap<String, String> = [("s0", "gone"), ("s7", "i0")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        let a = balanced_assignment(&names("i", 2), &shards, &current);
        check_balanced(&a, 2, "stale");
    }

    /// (listing as (id, parents), finished, expected eligible)
    type LineageCase = (
        &'static [(&'static str, &'static [&'static str])],
        &'static [&'static str],
        &'static [&'static str],
    );

    const LINEAGE: &[(&str, LineageCase)] = &[
        (
            "no resharding",
            (&[("a", &[]), ("b", &[])], &[], &["a", "b"]),
        ),
        (
            "split: children wait for the parent",
            (&[("p", &[]), ("c1", &["p"]), ("c2", &["p"])], &[], &["p"]),
        ),
        (
            "split: parent finished",
            (
                &[("p", &[]), ("c1", &["p"]), ("c2", &["p"])],
                &["p"],
                &["c1", "c2"],
            ),
        ),
        (
            "merge: child waits for both parents",
            (
                &[("p1", &[]), ("p2", &[]), ("m", &["p1", "p2"])],
                &["p1"],
                &["p2"],
            ),
        ),
        (
            "merge: both parents finished",
            (
                &[("p1", &[]), ("p2", &[]), ("m", &["p1", "p2"])],
                &["p1", "p2"],
                &["m"],
            ),
        ),
        (
            "parent aged out of retention",
            (&[("c", &["gone"])], &[], &["c"]),
        ),
        (
            "finished shards are never eligible",
            (&[("a", &[]), ("b", &[])], &["a", "b"], &[]),
        ),
        (
            "grandchild waits for its own parent only",
            (&[("p", &[]), ("c", &["p"]), ("g", &["c"])], &["p"], &["c"]),
        ),
    ];

    #[test]
    fn lineage_scenarios() {
        for (name, (listing, finished, expected)) in LINEAGE {
            let listing: Vec<ShardLineage> = listing
                .iter()
                .map(|(id, parents)| {
                    parents
                        .iter()
                        .fold(ShardLineage::new(*id), |s, p| s.parent(*p))
                })
                .collect();
            let finished: HashSet<String> = finished.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(eligible_shards(&listing, &finished), *expected, "{name}");
        }
    }
}
