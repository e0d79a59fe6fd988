//! The `consumer` protocol's embedded messages: a member's subscription (JoinGroup metadata) and
//! its assignment (SyncGroup), each an `int16` version followed by the versioned body, as the
//! Java client and librdkafka write them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::TopicPartition;

/// The group protocol type of consumers.
pub(crate) const PROTOCOL_TYPE: &str = "consumer";

/// The subscription version we write: v1 (topics, user data, owned partitions). Newer versions
/// add the generation and rack id, which would change between rejoins.
pub(crate) const SUBSCRIPTION_VERSION: i16 = 1;

/// Newest body version we read; later versions only append fields, which are skipped.
const NEWEST_KNOWN: i16 = 3;

/// A member's subscription, as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub version: i16,
    pub topics: Vec<String>,
    pub owned: Vec<TopicPartition>,
}

/// Our subscription: `topics` (sorted, so the bytes are the same on every join), no user data,
/// no owned partitions (an eager member has given up its partitions when it rejoins).
pub(crate) fn encode_subscription(topics: &[String]) -> Bytes {
    let mut sorted: Vec<&String> = topics.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut body = ConsumerProtocolSubscription::default();
    body.topics = sorted
        .into_iter()
        .map(|t| StrBytes::from_string(t.clone()))
        .collect();
    body.user_data = None;
    body.owned_partitions = Vec::new();
    versioned(SUBSCRIPTION_VERSION, &body)
}

/// Reads a subscription of any version.
pub(crate) fn decode_subscription(bytes: &Bytes) -> Result<Subscription, String> {
    let (version, mut body) = split_version(bytes)?;
    let s = ConsumerProtocolSubscription::decode(&mut body, version.min(NEWEST_KNOWN))
        .map_err(|e| format!("subscription v{version}: {e}"))?;
    Ok(Subscription {
        version,
        topics: s.topics.iter().map(|t| t.as_str().to_string()).collect(),
        owned: s
            .owned_partitions
            .iter()
            .flat_map(|t: &OwnedTopic| {
                t.partitions
                    .iter()
                    .map(move |p| TopicPartition::new(t.topic.as_str(), *p))
            })
            .collect(),
    })
}

/// An assignment body at `version` (0..=3 share one layout), partitions grouped by topic.
pub(crate) fn encode_assignment(version: i16, partitions: &[TopicPartition]) -> Bytes {
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let mut body = ConsumerProtocolAssignment::default();
    body.assigned_partitions = by_topic
        .into_iter()
        .map(|(topic, mut parts)| {
            parts.sort_unstable();
            let mut t = AssignedTopic::default();
            t.topic = TopicName(StrBytes::from_string(topic.to_string()));
            t.partitions = parts;
            t
        })
        .collect();
    body.user_data = None;
    versioned(version.clamp(0, NEWEST_KNOWN), &body)
}

/// Reads an assignment of any version; an empty buffer is an empty assignment (what a broker
/// hands a member the leader gave nothing).
pub(crate) fn decode_assignment(bytes: &Bytes) -> Result<Vec<TopicPartition>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let (version, mut body) = split_version(bytes)?;
    let a = ConsumerProtocolAssignment::decode(&mut body, version.min(NEWEST_KNOWN))
        .map_err(|e| format!("assignment v{version}: {e}"))?;
    let mut out: Vec<TopicPartition> = a
        .assigned_partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| TopicPartition::new(t.topic.as_str(), *p))
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn split_version(bytes: &Bytes) -> Result<(i16, Bytes), String> {
    if bytes.len() < 2 {
        return Err(format!("{} bytes, too short for a version", bytes.len()));
    }
    let mut body = bytes.clone();
    let version = body.get_i16();
    if version < 0 {
        return Err(format!("negative version {version}"));
    }
    Ok((version, body))
}

fn versioned<M: Encodable>(version: i16, message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i16(version);
    // Versions 0..=3 are valid for both message types, so encoding cannot fail.
    if let Err(e) = message.encode(&mut buf, version) {
        tracing::error!(error = %e, "encoding a consumer protocol message failed");
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_bytes_are_the_standard_v1_layout() {
        let bytes = encode_subscription(&["b".into(), "a".into(), "b".into()]);
        let expected: &[u8] = &[
            0, 1, // version 1
            0, 0, 0, 2, // 2 topics
            0, 1, b'a', 0, 1, b'b', // sorted, deduplicated
            0xff, 0xff, 0xff, 0xff, // null user data
            0, 0, 0, 0, // no owned partitions
        ];
        assert_eq!(&bytes[..], expected);
        let s = decode_subscription(&bytes).unwrap();
        assert_eq!(s.topics, vec!["a", "b"]);
        assert_eq!(s.version, 1);
    }

    #[test]
    fn reads_subscriptions_of_newer_versions() {
        // v3 as a newer client writes it: topics, user data, owned, generation, rack, and a
        // field of some future version appended.
        let mut buf = BytesMut::new();
        buf.put_i16(4);
        buf.put_i32(1);
        buf.put_i16(1);
        buf.put_slice(b"t");
        buf.put_i32(2);
        buf.put_slice(b"ud");
        buf.put_i32(1);
        buf.put_i16(1);
        buf.put_slice(b"t");
        buf.put_i32(1);
        buf.put_i32(7);
        buf.put_i32(12); // generation
        buf.put_i16(-1); // no rack
        buf.put_i64(99); // future field
        let s = decode_subscription(&buf.freeze()).unwrap();
        assert_eq!(s.version, 4);
        assert_eq!(s.topics, vec!["t"]);
        assert_eq!(s.owned, vec![TopicPartition::new("t", 7)]);
    }

    #[test]
    fn assignment_round_trip_and_layout() {
        let parts = vec![
            TopicPartition::new("x", 2),
            TopicPartition::new("a", 1),
            TopicPartition::new("x", 0),
        ];
        let bytes = encode_assignment(0, &parts);
        let expected: &[u8] = &[
            0, 0, // version 0
            0, 0, 0, 2, // 2 topics
            0, 1, b'a', 0, 0, 0, 1, 0, 0, 0, 1, // a: [1]
            0, 1, b'x', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, // x: [0, 2]
            0xff, 0xff, 0xff, 0xff, // null user data
        ];
        assert_eq!(&bytes[..], expected);
        let mut sorted = parts.clone();
        sorted.sort();
        assert_eq!(decode_assignment(&bytes).unwrap(), sorted);
        assert_eq!(decode_assignment(&Bytes::new()).unwrap(), vec![]);
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(&Bytes::from_static(&[0, 0, 0, 0, 0, 9])).is_err());
    }
}
