//! Sets of `(topic, partition)` on the wire (`v1::TopicPartitions`, one
//! entry per topic): converted here, once, for the broker's group services
//! and the client's consumer.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use crate::v1;

/// The set of `(topic, partition)` a wire list names.
pub fn from_proto(list: &[v1::TopicPartitions]) -> BTreeSet<(String, u32)> {
    list.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.topic.clone(), *p))).collect()
}

/// `set` as a wire list: topics in order, each with its partitions in order.
pub fn to_proto(set: &BTreeSet<(String, u32)>) -> Vec<v1::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in set {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic.into_iter().map(|(t, ps)| v1::TopicPartitions { topic: t.to_string(), partitions: ps }).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_set_survives_the_wire() {
        let set = [("a".to_string(), 2), ("a".to_string(), 0), ("b".to_string(), 1)].into_iter().collect();
        let wire = super::to_proto(&set);
        assert_eq!(wire.len(), 2, "one entry per topic");
        assert_eq!(wire[0].partitions, vec![0, 2]);
        assert_eq!(super::from_proto(&wire), set);
    }
}
