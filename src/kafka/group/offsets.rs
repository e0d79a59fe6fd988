//! Committed offsets: `OffsetFetch` and `OffsetCommit`, for members and for standalone use.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::coordinator::Coordinator;
use super::error::{describe, hint};
use super::{GroupError, TopicPartition};
use crate::kafka::KafkaConfig;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// Who commits: a member of a generation, or nobody (standalone).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Committer<'a> {
    /// A member: its id and generation.
    Member { member_id: &'a str, generation: i32 },
    /// No membership: generation -1 and an empty member id.
    Standalone,
}

/// Why a commit failed, before it is worded for the caller.
#[derive(Debug)]
pub(crate) enum CommitFailure {
    /// The broker says the committer is not (or no longer) in the group's current generation.
    Fenced(ResponseError),
    /// Anything else.
    Other(GroupError),
}

fn by_topic<'a, T: 'a>(
    items: impl IntoIterator<Item = (&'a TopicPartition, T)>,
) -> BTreeMap<&'a str, Vec<(i32, T)>> {
    let mut out: BTreeMap<&str, Vec<(i32, T)>> = BTreeMap::new();
    for (tp, v) in items {
        out.entry(tp.topic.as_str())
            .or_default()
            .push((tp.partition, v));
    }
    out
}

fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// The OffsetFetch request for `partitions` at `version`.
pub(crate) fn fetch_request(
    group: &str,
    partitions: &[TopicPartition],
    version: i16,
) -> OffsetFetchRequest {
    let grouped = by_topic(partitions.iter().map(|tp| (tp, ())));
    let mut request = OffsetFetchRequest::default();
    if version >= 8 {
        let mut g = OffsetFetchRequestGroup::default();
        g.group_id = GroupId(StrBytes::from_string(group.to_string()));
        // The classic protocol has no member epoch: null member id and -1 (v9).
        g.member_id = None;
        g.member_epoch = -1;
        g.topics = Some(
            grouped
                .iter()
                .map(|(t, ps)| {
                    let mut topic = OffsetFetchRequestTopics::default();
                    topic.name = topic_name(t);
                    topic.partition_indexes = ps.iter().map(|(p, _)| *p).collect();
                    topic
                })
                .collect(),
        );
        request.groups = vec![g];
        // Not part of v8+; the encoder wants it empty (not null).
        request.topics = Some(Vec::new());
    } else {
        request.group_id = GroupId(StrBytes::from_string(group.to_string()));
        request.topics = Some(
            grouped
                .iter()
                .map(|(t, ps)| {
                    let mut topic = OffsetFetchRequestTopic::default();
                    topic.name = topic_name(t);
                    topic.partition_indexes = ps.iter().map(|(p, _)| *p).collect();
                    topic
                })
                .collect(),
        );
    }
    // Wait for pending transactional commits to settle rather than read a stale offset.
    request.require_stable = version >= 7;
    request
}

/// The committed offsets of `partitions` (`None`: nothing committed).
pub(crate) async fn fetch(
    coordinator: &Coordinator,
    partitions: &[TopicPartition],
) -> Result<BTreeMap<TopicPartition, Option<i64>>, GroupError> {
    let mut out: BTreeMap<TopicPartition, Option<i64>> =
        partitions.iter().map(|tp| (tp.clone(), None)).collect();
    if partitions.is_empty() {
        return Ok(out);
    }
    let group = coordinator.group();
    let (response, version) = coordinator
        .send(coordinator.request_deadline(), |v| {
            fetch_request(group, partitions, v)
        })
        .await?;
    let mut answers: Vec<(String, i32, i64, i16)> = Vec::new();
    let top_error = if version >= 8 {
        let g = response
            .groups
            .iter()
            .find(|g| g.group_id.as_str() == group)
            .or(response.groups.first());
        match g {
            Some(g) => {
                for t in &g.topics {
                    for p in &t.partitions {
                        answers.push((
                            t.name.as_str().to_string(),
                            p.partition_index,
                            p.committed_offset,
                            p.error_code,
                        ));
                    }
                }
                g.error_code
            }
            None => 0,
        }
    } else {
        for t in &response.topics {
            for p in &t.partitions {
                answers.push((
                    t.name.as_str().to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                ));
            }
        }
        response.error_code
    };
    if let Some(error) = ResponseError::try_from_code(top_error) {
        return Err(GroupError::Broker {
            operation: "OffsetFetch",
            group: group.to_string(),
            error,
            hint: hint(error),
        });
    }
    let mut failures = Vec::new();
    for (topic, partition, offset, code) in answers {
        let tp = TopicPartition::new(topic, partition);
        // Unknown partitions have no committed offset (older brokers say so with an error).
        if code != 0 && code != UNKNOWN_TOPIC_OR_PARTITION {
            failures.push((tp, describe(code)));
            continue;
        }
        if let Some(slot) = out.get_mut(&tp) {
            *slot = (code == 0 && offset >= 0).then_some(offset);
        }
    }
    if !failures.is_empty() {
        return Err(GroupError::Partitions {
            operation: "OffsetFetch",
            group: group.to_string(),
            failures,
        });
    }
    Ok(out)
}

/// The OffsetCommit request (fields of versions that lack them are not encoded).
pub(crate) fn commit_request(
    group: &str,
    committer: Committer<'_>,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> OffsetCommitRequest {
    let (member_id, generation) = match committer {
        Committer::Member {
            member_id,
            generation,
        } => (member_id, generation),
        Committer::Standalone => ("", -1),
    };
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(StrBytes::from_string(group.to_string()));
    request.generation_id_or_member_epoch = generation;
    request.member_id = StrBytes::from_string(member_id.to_string());
    request.group_instance_id = None;
    // v2..v4: -1 keeps the broker's offsets.retention.minutes.
    request.retention_time_ms = -1;
    request.topics = by_topic(offsets.iter())
        .into_iter()
        .map(|(t, ps)| {
            let mut topic = OffsetCommitRequestTopic::default();
            topic.name = topic_name(t);
            topic.partitions = ps
                .into_iter()
                .map(|(p, offset)| {
                    let mut part = OffsetCommitRequestPartition::default();
                    part.partition_index = p;
                    part.committed_offset = *offset;
                    part.committed_leader_epoch = -1;
                    part.committed_metadata = Some(StrBytes::from_static_str(""));
                    part
                })
                .collect();
            topic
        })
        .collect();
    request
}

/// Commits `offsets` (next offset to read, per partition).
pub(crate) async fn commit(
    coordinator: &Coordinator,
    committer: Committer<'_>,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<(), CommitFailure> {
    if let Some((tp, &offset)) = offsets.iter().find(|(_, o)| **o < 0) {
        return Err(CommitFailure::Other(GroupError::InvalidOffset {
            partition: tp.clone(),
            offset,
        }));
    }
    if offsets.is_empty() {
        return Ok(());
    }
    let group = coordinator.group();
    let (response, _) = coordinator
        .send(coordinator.request_deadline(), |_| {
            commit_request(group, committer, offsets)
        })
        .await
        .map_err(CommitFailure::Other)?;
    let mut failures = Vec::new();
    for t in &response.topics {
        for p in &t.partitions {
            let Some(error) = ResponseError::try_from_code(p.error_code) else {
                continue;
            };
            if matches!(
                error,
                ResponseError::IllegalGeneration
                    | ResponseError::UnknownMemberId
                    | ResponseError::RebalanceInProgress
                    | ResponseError::FencedInstanceId
                    | ResponseError::StaleMemberEpoch
            ) {
                return Err(CommitFailure::Fenced(error));
            }
            if matches!(
                error,
                ResponseError::GroupAuthorizationFailed | ResponseError::InvalidGroupId
            ) {
                return Err(CommitFailure::Other(GroupError::Broker {
                    operation: "OffsetCommit",
                    group: group.to_string(),
                    error,
                    hint: hint(error),
                }));
            }
            failures.push((
                TopicPartition::new(t.name.as_str(), p.partition_index),
                describe(p.error_code),
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CommitFailure::Other(GroupError::Partitions {
            operation: "OffsetCommit",
            group: group.to_string(),
            failures,
        }))
    }
}

/// Committed offsets of a group without joining it: for a reader of explicitly chosen
/// partitions that still keeps its position in a group (the way Kafka's "simple consumers"
/// commit).
///
/// Commits carry generation -1 and an empty member id. Apache Kafka accepts them only while the
/// group has no members (otherwise [`GroupError::GroupNotEmpty`]); tansu 0.6 accepts them always.
/// Reading committed offsets is allowed in any case.
pub struct OffsetStore {
    coordinator: Arc<Coordinator>,
}

impl std::fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetStore")
            .field("group_id", &self.coordinator.group())
            .finish_non_exhaustive()
    }
}

impl OffsetStore {
    /// Finds the coordinator of `group_id` (retrying until `kafka.connect_timeout`).
    pub async fn connect(kafka: &KafkaConfig, group_id: &str) -> Result<OffsetStore, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::Config {
                field: "group_id",
                message: "must not be empty".into(),
            });
        }
        Ok(OffsetStore {
            coordinator: Arc::new(Coordinator::connect(kafka, group_id).await?),
        })
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        self.coordinator.group()
    }

    /// The committed offset (next offset to read) of each partition; `None` where nothing was
    /// committed. Every requested partition is in the result.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, GroupError> {
        fetch(&self.coordinator, partitions).await
    }

    /// Commits `offsets`: per partition, the offset of the next record to read.
    pub async fn commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<(), GroupError> {
        commit(&self.coordinator, Committer::Standalone, offsets)
            .await
            .map_err(|f| match f {
                CommitFailure::Fenced(e) => GroupError::GroupNotEmpty {
                    group: self.group_id().to_string(),
                    reason: e.to_string(),
                },
                CommitFailure::Other(e) => e,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::Encodable;

    fn tps() -> Vec<TopicPartition> {
        vec![
            TopicPartition::new("a", 0),
            TopicPartition::new("a", 3),
            TopicPartition::new("b", 1),
        ]
    }

    #[test]
    fn requests_encode_at_every_version_we_claim() {
        use super::super::coordinator::GroupRequest;
        for v in OffsetFetchRequest::VERSIONS.min..=OffsetFetchRequest::VERSIONS.max {
            let r = fetch_request("g", &tps(), v);
            r.encode(&mut BytesMut::new(), v)
                .unwrap_or_else(|e| panic!("OffsetFetch v{v}: {e}"));
        }
        let offsets: BTreeMap<TopicPartition, i64> = tps().into_iter().zip([5, 6, 7]).collect();
        for v in OffsetCommitRequest::VERSIONS.min..=OffsetCommitRequest::VERSIONS.max {
            for c in [
                Committer::Standalone,
                Committer::Member {
                    member_id: "m",
                    generation: 3,
                },
            ] {
                let r = commit_request("g", c, &offsets);
                r.encode(&mut BytesMut::new(), v)
                    .unwrap_or_else(|e| panic!("OffsetCommit v{v}: {e}"));
            }
        }
    }
}
