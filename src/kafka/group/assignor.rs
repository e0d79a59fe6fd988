//! Partition assignors with the Java client's names and results, so that a group may mix our
//! members with Java or librdkafka ones whichever member leads.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use super::{GroupError, TopicPartition};

/// A partition assignment strategy (`partition.assignment.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Assignor {
    /// `range`: per topic, the partitions in order are cut into contiguous ranges, one per
    /// subscribed member in member order; the first `partitions % members` members get one more.
    #[default]
    Range,
    /// `roundrobin`: all subscribed topic-partitions, sorted by topic then partition, are dealt
    /// to the members in member order, skipping members not subscribed to the topic.
    RoundRobin,
}

impl Assignor {
    /// The protocol name sent to the broker: `range` or `roundrobin`.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }

    /// Parses a comma-separated preference list such as `"range,roundrobin"`.
    pub fn parse_list(s: &str) -> Result<Vec<Assignor>, GroupError> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let a: Assignor = name.parse()?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if out.is_empty() {
            return Err(GroupError::UnknownAssignor(s.to_string()));
        }
        Ok(out)
    }

    /// Assigns the partitions of the subscribed topics to `members`.
    ///
    /// `partitions_per_topic` gives each topic's partition count; topics missing from it are
    /// left out (as the Java client does for topics without metadata). Every member appears in
    /// the result, possibly with no partitions; each list is sorted by (topic, partition).
    pub fn assign(
        self,
        members: &[MemberSubscription],
        partitions_per_topic: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut result = match self {
            Assignor::Range => range(members, partitions_per_topic),
            Assignor::RoundRobin => round_robin(members, partitions_per_topic),
        };
        for parts in result.values_mut() {
            parts.sort();
        }
        result
    }
}

impl FromStr for Assignor {
    type Err = GroupError;

    fn from_str(s: &str) -> Result<Assignor, GroupError> {
        match s.trim() {
            "range" => Ok(Assignor::Range),
            "roundrobin" => Ok(Assignor::RoundRobin),
            other => Err(GroupError::UnknownAssignor(other.to_string())),
        }
    }
}

impl fmt::Display for Assignor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One member's subscription as the group leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSubscription {
    /// The member id the broker gave the member.
    pub member_id: String,
    /// The member's static `group.instance.id`, if it has one (it orders before member ids).
    pub group_instance_id: Option<String>,
    /// The topics it subscribed to.
    pub topics: Vec<String>,
}

impl MemberSubscription {
    /// A dynamic member (no `group.instance.id`).
    pub fn new(
        member_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> MemberSubscription {
        MemberSubscription {
            member_id: member_id.into(),
            group_instance_id: None,
            topics: topics.into_iter().map(Into::into).collect(),
        }
    }
}

/// The Java client's member order (`MemberInfo.compareTo`): static members first, by instance
/// id; then dynamic members by member id.
fn member_order(a: &MemberSubscription, b: &MemberSubscription) -> Ordering {
    match (&a.group_instance_id, &b.group_instance_id) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.member_id.cmp(&b.member_id),
    }
}

fn empty_result(members: &[MemberSubscription]) -> BTreeMap<String, Vec<TopicPartition>> {
    members
        .iter()
        .map(|m| (m.member_id.clone(), Vec::new()))
        .collect()
}

fn range(
    members: &[MemberSubscription],
    partitions_per_topic: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut result = empty_result(members);
    let mut per_topic: BTreeMap<&str, Vec<&MemberSubscription>> = BTreeMap::new();
    for m in members {
        let topics: BTreeSet<&str> = m.topics.iter().map(String::as_str).collect();
        for t in topics {
            per_topic.entry(t).or_default().push(m);
        }
    }
    for (topic, mut consumers) in per_topic {
        let Some(&count) = partitions_per_topic.get(topic) else {
            tracing::warn!(
                topic,
                "no partition count for a subscribed topic; not assigned"
            );
            continue;
        };
        let count = count.max(0) as usize;
        consumers.sort_by(|a, b| member_order(a, b));
        let n = consumers.len();
        let per_member = count / n;
        let extra = count % n;
        for (i, m) in consumers.iter().enumerate() {
            let start = per_member * i + i.min(extra);
            let len = per_member + usize::from(i < extra);
            if let Some(parts) = result.get_mut(&m.member_id) {
                parts.extend((start..start + len).map(|p| TopicPartition::new(topic, p as i32)));
            }
        }
    }
    result
}

fn round_robin(
    members: &[MemberSubscription],
    partitions_per_topic: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut result = empty_result(members);
    let mut sorted: Vec<&MemberSubscription> = members.iter().collect();
    sorted.sort_by(|a, b| member_order(a, b));
    if sorted.is_empty() {
        return result;
    }
    let topics: BTreeSet<&str> = members
        .iter()
        .flat_map(|m| m.topics.iter().map(String::as_str))
        .collect();
    let mut next = 0usize;
    for topic in topics {
        let Some(&count) = partitions_per_topic.get(topic) else {
            tracing::warn!(
                topic,
                "no partition count for a subscribed topic; not assigned"
            );
            continue;
        };
        for partition in 0..count.max(0) {
            // Deal to the next member (circularly) that subscribes to this topic; one exists,
            // since the topic came from some member's subscription.
            let Some(offset) = (0..sorted.len()).find(|k| {
                sorted[(next + k) % sorted.len()]
                    .topics
                    .iter()
                    .any(|t| t == topic)
            }) else {
                break;
            };
            let member = sorted[(next + offset) % sorted.len()];
            if let Some(parts) = result.get_mut(&member.member_id) {
                parts.push(TopicPartition::new(topic, partition));
            }
            next = (next + offset + 1) % sorted.len();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, i32)]) -> BTreeMap<String, i32> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn tps(pairs: &[(&str, i32)]) -> Vec<TopicPartition> {
        pairs
            .iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect()
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!("range".parse::<Assignor>().unwrap(), Assignor::Range);
        assert_eq!(
            "roundrobin".parse::<Assignor>().unwrap(),
            Assignor::RoundRobin
        );
        assert!("round-robin".parse::<Assignor>().is_err());
        assert!("cooperative-sticky".parse::<Assignor>().is_err());
        assert_eq!(
            Assignor::parse_list("roundrobin, range,range").unwrap(),
            vec![Assignor::RoundRobin, Assignor::Range]
        );
        assert!(Assignor::parse_list(" , ").is_err());
        assert_eq!(Assignor::RoundRobin.to_string(), "roundrobin");
        let msg = "sticky".parse::<Assignor>().unwrap_err().to_string();
        assert!(msg.contains("`range` or `roundrobin`"), "{msg}");
    }

    // The examples of the Java client's RangeAssignor and RoundRobinAssignor documentation:
    // two consumers C0, C1, two topics t0, t1 with three partitions each.
    #[test]
    fn range_java_example() {
        let members = [
            MemberSubscription::new("C1", ["t0", "t1"]),
            MemberSubscription::new("C0", ["t0", "t1"]),
        ];
        let a = Assignor::Range.assign(&members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(a["C0"], tps(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]));
        assert_eq!(a["C1"], tps(&[("t0", 2), ("t1", 2)]));
    }

    #[test]
    fn roundrobin_java_example() {
        let members = [
            MemberSubscription::new("C0", ["t0", "t1"]),
            MemberSubscription::new("C1", ["t0", "t1"]),
        ];
        let a = Assignor::RoundRobin.assign(&members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(a["C0"], tps(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(a["C1"], tps(&[("t0", 1), ("t1", 0), ("t1", 2)]));
    }

    // RoundRobinAssignor documentation, unequal subscriptions: C0 ⊂ {t0}, C1 ⊂ {t0, t1},
    // C2 ⊂ {t0, t1, t2}; t0 has 1 partition, t1 2, t2 3.
    #[test]
    fn roundrobin_java_example_unequal_subscriptions() {
        let members = [
            MemberSubscription::new("C2", ["t0", "t1", "t2"]),
            MemberSubscription::new("C0", ["t0"]),
            MemberSubscription::new("C1", ["t0", "t1"]),
        ];
        let a = Assignor::RoundRobin.assign(&members, &counts(&[("t0", 1), ("t1", 2), ("t2", 3)]));
        assert_eq!(a["C0"], tps(&[("t0", 0)]));
        assert_eq!(a["C1"], tps(&[("t1", 0)]));
        assert_eq!(a["C2"], tps(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)]));
    }

    #[test]
    fn range_uneven_split_and_per_topic_members() {
        // 7 partitions over 3 members: 3, 2, 2; t1 only for B and C.
        let members = [
            MemberSubscription::new("C", ["t0", "t1"]),
            MemberSubscription::new("A", ["t0"]),
            MemberSubscription::new("B", ["t0", "t1"]),
        ];
        let a = Assignor::Range.assign(&members, &counts(&[("t0", 7), ("t1", 3)]));
        assert_eq!(a["A"], tps(&[("t0", 0), ("t0", 1), ("t0", 2)]));
        assert_eq!(a["B"], tps(&[("t0", 3), ("t0", 4), ("t1", 0), ("t1", 1)]));
        assert_eq!(a["C"], tps(&[("t0", 5), ("t0", 6), ("t1", 2)]));
    }

    #[test]
    fn more_members_than_partitions_and_unknown_topics() {
        let members = [
            MemberSubscription::new("m1", ["t", "gone"]),
            MemberSubscription::new("m2", ["t"]),
            MemberSubscription::new("m3", ["t"]),
        ];
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let a = assignor.assign(&members, &counts(&[("t", 2)]));
            assert_eq!(a.len(), 3, "{assignor}: every member is in the result");
            assert_eq!(a["m1"], tps(&[("t", 0)]), "{assignor}");
            assert_eq!(a["m2"], tps(&[("t", 1)]), "{assignor}");
            assert!(a["m3"].is_empty(), "{assignor}");
        }
    }

    #[test]
    fn static_members_order_first() {
        let mut stat = MemberSubscription::new("zzz", ["t"]);
        stat.group_instance_id = Some("instance-1".into());
        let members = [MemberSubscription::new("aaa", ["t"]), stat];
        let a = Assignor::Range.assign(&members, &counts(&[("t", 3)]));
        assert_eq!(a["zzz"], tps(&[("t", 0), ("t", 1)]));
        assert_eq!(a["aaa"], tps(&[("t", 2)]));
    }

    #[test]
    fn every_partition_exactly_once() {
        let members: Vec<MemberSubscription> = (0..5)
            .map(|i| MemberSubscription::new(format!("m{i}"), ["a", "b", "c"]))
            .collect();
        let topics = counts(&[("a", 6), ("b", 11), ("c", 1)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let a = assignor.assign(&members, &topics);
            let mut all: Vec<TopicPartition> = a.values().flatten().cloned().collect();
            all.sort();
            let expected: Vec<TopicPartition> = topics
                .iter()
                .flat_map(|(t, n)| (0..*n).map(move |p| TopicPartition::new(t.clone(), p)))
                .collect();
            assert_eq!(all, expected, "{assignor}");
        }
    }
}
