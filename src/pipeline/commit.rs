//! Where a run's positions live: nowhere (no group), in a group as a standalone consumer with
//! explicit partitions, or in a group as a member that Kafka assigns partitions to.

use std::collections::BTreeMap;

use crate::kafka::group::{self, GroupConfig, GroupError, GroupMember, OffsetStore};
use crate::kafka::offsets::TopicPartition;
use crate::kafka::{KafkaConfig, TopicSelection};

/// How positions are fetched and committed.
pub(super) enum Committer {
    /// No group: nothing is committed; every run starts at `start`.
    None,
    /// Explicit partitions with a group id: positions are fetched from and committed to the
    /// group without joining it.
    Standalone(OffsetStore),
    /// A group member: Kafka assigns the partitions.
    Member(GroupMember),
}

impl Committer {
    /// Joins the group (member mode) or connects to its coordinator (standalone mode).
    pub(super) async fn start(
        kafka: &KafkaConfig,
        group: Option<&GroupConfig>,
        topics: &[TopicSelection],
    ) -> Result<Committer, GroupError> {
        let Some(group) = group else {
            return Ok(Committer::None);
        };
        if topics.iter().all(|t| t.partitions.is_some()) {
            return Ok(Committer::Standalone(
                OffsetStore::connect(kafka, &group.group_id).await?,
            ));
        }
        let names = topics.iter().map(|t| t.topic.clone()).collect();
        let member = GroupMember::join(kafka, group.clone(), names).await?;
        tracing::info!(
            group = %group.group_id, member = member.member_id(), generation = member.generation(),
            assignment = %describe(member.assignment()), "joined consumer group"
        );
        Ok(Committer::Member(member))
    }

    /// True for a group member (partitions assigned by Kafka).
    pub(super) fn is_member(&self) -> bool {
        matches!(self, Committer::Member(_))
    }

    /// True when positions are kept in a group.
    pub(super) fn commits(&self) -> bool {
        !matches!(self, Committer::None)
    }

    /// The topics and partitions to read: the assignment for a member, else `configured`.
    pub(super) fn selection(&self, configured: &[TopicSelection]) -> Vec<TopicSelection> {
        let Committer::Member(member) = self else {
            return configured.to_vec();
        };
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for tp in member.assignment() {
            by_topic
                .entry(tp.topic.clone())
                .or_default()
                .push(tp.partition);
        }
        by_topic
            .into_iter()
            .map(|(topic, partitions)| TopicSelection {
                topic,
                partitions: Some(partitions),
            })
            .collect()
    }

    /// Committed positions of the given partitions (those with one).
    pub(super) async fn committed(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<BTreeMap<(String, i32), i64>, GroupError> {
        let tps: Vec<group::TopicPartition> = partitions
            .iter()
            .map(|(t, p)| group::TopicPartition::new(t.clone(), *p))
            .collect();
        let found = match self {
            Committer::None => return Ok(BTreeMap::new()),
            Committer::Standalone(store) => store.committed(&tps).await?,
            Committer::Member(member) => member.committed(&tps).await?,
        };
        Ok(found
            .into_iter()
            .filter_map(|(tp, pos)| pos.map(|p| ((tp.topic, tp.partition), p)))
            .collect())
    }

    /// Commits positions (next offset to read).
    pub(super) async fn commit(
        &self,
        positions: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), GroupError> {
        if positions.is_empty() {
            return Ok(());
        }
        let offsets: BTreeMap<group::TopicPartition, i64> = positions
            .iter()
            .map(|((topic, partition), pos)| {
                (group::TopicPartition::new(topic.as_ref(), *partition), *pos)
            })
            .collect();
        match self {
            Committer::None => Ok(()),
            Committer::Standalone(store) => store.commit(&offsets).await,
            Committer::Member(member) => member.commit(&offsets).await,
        }
    }

    /// Resolves when the group needs a rebalance; never without membership.
    pub(super) async fn rebalance_needed(&self) {
        match self {
            Committer::Member(member) => member.rebalance_needed().await,
            _ => std::future::pending().await,
        }
    }

    /// Rejoins after a rebalance signal (member mode only).
    pub(super) async fn rejoin(&mut self) -> Result<(), GroupError> {
        if let Committer::Member(member) = self {
            let assignment = member.rejoin().await?;
            tracing::info!(assignment = %describe(assignment), "rebalanced");
        }
        Ok(())
    }

    /// Leaves the group (member mode), so the others take over at once.
    pub(super) async fn leave(self) {
        if let Committer::Member(member) = self {
            if let Err(e) = member.leave().await {
                tracing::warn!(error = %e, "leaving the consumer group failed; the broker will drop this member after the session timeout");
            }
        }
    }
}

fn describe(assignment: &[group::TopicPartition]) -> String {
    if assignment.is_empty() {
        return "none".into();
    }
    assignment
        .iter()
        .map(|tp| tp.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
