//! One consumer core: which partitions to read, from which position, and where acknowledged
//! positions go.
//!
//! Everything that reads with a consumer group (the pipeline of `streamtract run --group` and
//! the tensorflow-io `KafkaGroupDataset` of the dataset layer) runs the same
//! sequence, and it lives here once:
//!
//! 1. [`Consumer::start`]: join the group (partitions assigned by Kafka), or keep positions in
//!    it for explicit partitions without joining (standalone), or keep no positions at all;
//! 2. [`Consumer::open_source`]: look up the committed positions of what is assigned and start
//!    a [`Source`] there (where there is none, at the configured start);
//! 3. [`Consumer::commit`]: commit what an [`OffsetTracker`](super::OffsetTracker) says is
//!    acknowledged, and only that (commit after ack);
//! 4. [`Consumer::rebalance_needed`] / [`Consumer::rejoin`]: on a rebalance, after the caller
//!    has finished or revoked what it still holds, rejoin and open the new assignment;
//! 5. [`Consumer::leave`]: leave the group, so the others take over at once.
//!
//! The callers keep only what differs between them: the pipeline drains the batches in flight
//! before it gives partitions up, the dataset revokes the records its stream still buffers.

use std::collections::BTreeMap;
use std::sync::Arc;

use rskafka::client::Client;

use super::group::{self, GroupConfig, GroupError, GroupMember, OffsetStore};
use super::offsets::TopicPartition;
use super::{topic_partitions, KafkaConfig, KafkaError, Source, SourceConfig, TopicSelection};

/// Starting or reading failed: a Kafka request or a group operation.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Listing partitions or starting the fetchers failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Joining, looking up committed positions or committing failed.
    #[error(transparent)]
    Group(#[from] GroupError),
}

/// Where positions live.
enum Membership {
    /// No group: nothing is committed; every run starts at the configured start.
    None,
    /// Explicit partitions with a group id: positions are fetched from and committed to the
    /// group without joining it.
    Standalone(OffsetStore),
    /// A group member: Kafka assigns the partitions.
    Member(GroupMember),
}

/// A consumer of configured topics, with or without a consumer group (see the module docs).
pub struct Consumer {
    client: Arc<Client>,
    kafka: KafkaConfig,
    /// Topics as configured, start policy and fetch settings; the topics actually read are
    /// the assignment's.
    template: SourceConfig,
    membership: Membership,
    /// The group id, for logs ("" without a group).
    group: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group)
            .field("member", &self.is_member())
            .field("reading", &self.selection())
            .finish_non_exhaustive()
    }
}

/// A source opened on the current assignment.
#[derive(Debug)]
pub struct Opened {
    /// The records of the assignment.
    pub source: Source,
    /// The committed positions it resumed from (partitions without one start at the
    /// configured start and are absent).
    pub resumed: BTreeMap<(String, i32), i64>,
}

impl Consumer {
    /// Joins `group` (member mode: some topic without explicit partitions), or connects to its
    /// coordinator (standalone: every topic with explicit partitions), or, without a group,
    /// keeps no positions. `source` gives the configured topics, the start policy and the fetch
    /// settings; `client` fetches.
    pub async fn start(
        client: Arc<Client>,
        kafka: &KafkaConfig,
        source: SourceConfig,
        group: Option<&GroupConfig>,
    ) -> Result<Consumer, GroupError> {
        let membership = match group {
            None => Membership::None,
            Some(group) if source.topics.iter().all(|t| t.partitions.is_some()) => {
                Membership::Standalone(OffsetStore::connect(kafka, &group.group_id).await?)
            }
            Some(group) => {
                let names = source.topics.iter().map(|t| t.topic.clone()).collect();
                let member = GroupMember::join(kafka, group.clone(), names).await?;
                tracing::info!(
                    group = %group.group_id, member = member.member_id(), generation = member.generation(),
                    assignment = %describe(member.assignment()), "joined consumer group"
                );
                Membership::Member(member)
            }
        };
        Ok(Consumer {
            client,
            kafka: kafka.clone(),
            template: source,
            membership,
            group: group.map(|g| g.group_id.clone()).unwrap_or_default(),
        })
    }

    /// True for a group member (partitions assigned by Kafka).
    pub fn is_member(&self) -> bool {
        matches!(self.membership, Membership::Member(_))
    }

    /// True when positions are kept in a group.
    pub fn commits(&self) -> bool {
        !matches!(self.membership, Membership::None)
    }

    /// The group membership, for a member.
    pub fn member(&self) -> Option<&GroupMember> {
        match &self.membership {
            Membership::Member(member) => Some(member),
            _ => None,
        }
    }

    /// The partitions Kafka assigned to this member; empty without membership.
    pub fn assignment(&self) -> Vec<group::TopicPartition> {
        match &self.membership {
            Membership::Member(member) => member.assignment().to_vec(),
            _ => Vec::new(),
        }
    }

    /// The topics and partitions to read: the assignment for a member, else as configured.
    pub fn selection(&self) -> Vec<TopicSelection> {
        let Membership::Member(member) = &self.membership else {
            return self.template.topics.clone();
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

    /// Starts reading [`selection`](Self::selection) from the committed positions, where the
    /// group has any. A member with nothing assigned gets a source that ends at once.
    pub async fn open_source(&self) -> Result<Opened, ConsumerError> {
        let mut config = self.template.clone();
        config.topics = self.selection();
        if self.is_member() && config.topics.is_empty() {
            tracing::info!(group = %self.group, "no partitions assigned to this member; waiting for a rebalance");
        }
        if self.commits() {
            let mut partitions = Vec::new();
            for sel in &config.topics {
                let wanted = match &sel.partitions {
                    Some(wanted) => wanted.clone(),
                    None => topic_partitions(&self.client, &self.kafka, &sel.topic, "input")
                        .await?
                        .into_iter()
                        .collect(),
                };
                partitions.extend(wanted.into_iter().map(|p| (sel.topic.clone(), p)));
            }
            config.resume = self.committed(&partitions).await?;
        }
        let source = Source::start(Arc::clone(&self.client), &self.kafka, &config).await?;
        for r in source.ranges() {
            let resumed = config.resume.contains_key(&(r.topic.clone(), r.partition));
            tracing::info!(group = %self.group, topic = %r.topic, partition = r.partition, start = r.start, end = ?r.end, resumed, "reading partition");
        }
        Ok(Opened {
            source,
            resumed: config.resume,
        })
    }

    /// Committed positions of the given partitions (those with one).
    async fn committed(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<BTreeMap<(String, i32), i64>, GroupError> {
        let tps: Vec<group::TopicPartition> = partitions
            .iter()
            .map(|(t, p)| group::TopicPartition::new(t.clone(), *p))
            .collect();
        let found = match &self.membership {
            Membership::None => return Ok(BTreeMap::new()),
            Membership::Standalone(store) => store.committed(&tps).await?,
            Membership::Member(member) => member.committed(&tps).await?,
        };
        Ok(found
            .into_iter()
            .filter_map(|(tp, pos)| pos.map(|p| ((tp.topic, tp.partition), p)))
            .collect())
    }

    /// Commits `positions` (the next offset to read per partition, as
    /// [`OffsetTracker::commits`](super::OffsetTracker::commits) gives them); without a group,
    /// nothing. The caller confirms them to its tracker once this succeeds.
    pub async fn commit(
        &self,
        positions: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BTreeMap<group::TopicPartition, i64>, GroupError> {
        let offsets: BTreeMap<group::TopicPartition, i64> = positions
            .iter()
            .map(|((topic, partition), pos)| {
                (group::TopicPartition::new(topic.as_ref(), *partition), *pos)
            })
            .collect();
        if offsets.is_empty() {
            return Ok(offsets);
        }
        match &self.membership {
            Membership::None => {}
            Membership::Standalone(store) => store.commit(&offsets).await?,
            Membership::Member(member) => member.commit(&offsets).await?,
        }
        Ok(offsets)
    }

    /// Resolves when the group needs a rebalance; never without membership.
    pub async fn rebalance_needed(&self) {
        match &self.membership {
            Membership::Member(member) => member.rebalance_needed().await,
            _ => std::future::pending().await,
        }
    }

    /// Rejoins after a rebalance signal (member mode only; the others keep their partitions).
    /// Call it once what was read under the old assignment is finished or revoked and its
    /// positions committed; then [`open_source`](Self::open_source) reads the new one.
    pub async fn rejoin(&mut self) -> Result<(), GroupError> {
        if let Membership::Member(member) = &mut self.membership {
            let reason = member.rejoin_reason().unwrap_or_default();
            tracing::info!(group = %self.group, %reason, "rebalance: rejoining");
            let assignment = describe(member.rejoin().await?);
            tracing::info!(group = %self.group, generation = member.generation(), %assignment, "rebalanced");
        }
        Ok(())
    }

    /// Leaves the group (member mode), so the others take over at once.
    pub async fn leave(self) -> Result<(), GroupError> {
        match self.membership {
            Membership::Member(member) => member.leave().await,
            _ => Ok(()),
        }
    }
}

fn describe(assignment: &[group::TopicPartition]) -> String {
    if assignment.is_empty() {
        return "none".into();
    }
    assignment
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
