//! Topic specs: `topic[:partition[:offset[:last]]]`, as tensorflow-io's `KafkaDataset` reads them.

use std::fmt;
use std::str::FromStr;

use super::DatasetError;

/// Where a [`TopicSpec`] starts reading its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpecOffset {
    /// The oldest record still kept: an omitted offset, `earliest`, or librdkafka's logical
    /// offset `-2` (`OFFSET_BEGINNING`).
    #[default]
    Earliest,
    /// The end of the partition when the dataset is opened: `latest`, or librdkafka's logical
    /// offset `-1` (`OFFSET_END`).
    Latest,
    /// This offset (must lie within the partition's range when the dataset is opened).
    At(i64),
}

impl fmt::Display for SpecOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecOffset::Earliest => f.write_str("earliest"),
            SpecOffset::Latest => f.write_str("latest"),
            SpecOffset::At(n) => write!(f, "{n}"),
        }
    }
}

/// One subscription of a [`KafkaDataset`](super::KafkaDataset): tensorflow-io's
/// `topic:partition:offset:last` string.
///
/// | spec | reads |
/// |---|---|
/// | `pixels` | every partition of `pixels`, from the earliest offset |
/// | `pixels:2` | partition 2, from the earliest offset |
/// | `pixels:2:100` | partition 2 from offset 100 |
/// | `pixels:2:100:199` | partition 2, offsets 100 to 199 **inclusive** (100 records) |
/// | `pixels:2:100:-1` | partition 2 from offset 100, no end (same as `pixels:2:100`) |
///
/// **`last` is an inclusive end offset**, not a length: tensorflow-io's docstring calls the
/// fourth field a length ("`sampleTopic:0:0:10` will fetch the first 10 messages"), but its
/// reader stops after the record whose offset equals it, so `t:0:0:4` yields offsets 0, 1, 2,
/// 3 and 4 — five records — there and here. (One corner differs: tensorflow-io yields nothing
/// when `offset == last`; here `t:0:7:7` yields offset 7, as the inclusive rule says. A `last`
/// below the start offset yields nothing in both.)
///
/// Differences from tensorflow-io, on purpose:
///
/// - A bare `topic` reads **every partition** of the topic (tensorflow-io reads partition 0
///   only, which silently skips the others); write `topic:0` for partition 0 alone.
/// - An omitted offset means the earliest offset still kept (tensorflow-io means 0, which on a
///   topic whose old records were deleted falls back to librdkafka's `auto.offset.reset`). On a
///   topic that never deleted anything the two are the same.
/// - An offset outside the partition's range is an error naming the range, instead of a silent
///   reset.
///
/// The offset may also be `earliest`/`latest` or librdkafka's logical offsets `-2`/`-1`.
///
/// ```
/// use streamtract::dataset::{SpecOffset, TopicSpec};
/// let spec: TopicSpec = "pixels:0:0:4".parse().unwrap();
/// assert_eq!(spec.partition, Some(0));
/// assert_eq!(spec.offset, SpecOffset::At(0));
/// assert_eq!(spec.last, Some(4));
/// assert_eq!(spec.to_string(), "pixels:0:0:4");
/// assert!("pixels:zero".parse::<TopicSpec>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub topic: String,
    /// Partition; `None` reads every partition of the topic.
    pub partition: Option<i32>,
    /// Where to start.
    pub offset: SpecOffset,
    /// Last offset to read, inclusive; `None` for no end.
    pub last: Option<i64>,
}

impl TopicSpec {
    /// Every partition of `topic` from the earliest offset.
    pub fn topic(topic: impl Into<String>) -> TopicSpec {
        TopicSpec {
            topic: topic.into(),
            partition: None,
            offset: SpecOffset::Earliest,
            last: None,
        }
    }

    /// Offsets `first..=last` of one partition (tensorflow-io's `topic:partition:first:last`).
    pub fn range(topic: impl Into<String>, partition: i32, first: i64, last: i64) -> TopicSpec {
        TopicSpec {
            topic: topic.into(),
            partition: Some(partition),
            offset: SpecOffset::At(first),
            last: Some(last),
        }
    }
}

impl FromStr for TopicSpec {
    type Err = DatasetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| DatasetError::InvalidSpec {
            spec: s.to_string(),
            reason,
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        if parts.len() > 4 {
            return Err(invalid(format!(
                "{} fields, at most 4 are allowed",
                parts.len()
            )));
        }
        let topic = parts[0];
        if topic.is_empty() {
            return Err(invalid("the topic name is empty".into()));
        }
        if let Some(c) = topic
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(invalid(format!(
                "`{c}` cannot appear in a Kafka topic name (letters, digits, `.`, `_`, `-`)"
            )));
        }
        let partition = match parts.get(1) {
            None => None,
            Some(p) => match p.parse::<i32>() {
                Ok(n) if n >= 0 => Some(n),
                _ => return Err(invalid(format!("partition `{p}` is not a number >= 0"))),
            },
        };
        let offset = match parts.get(2) {
            None => SpecOffset::Earliest,
            Some(&"earliest") => SpecOffset::Earliest,
            Some(&"latest") => SpecOffset::Latest,
            Some(o) => match o.parse::<i64>() {
                Ok(-2) => SpecOffset::Earliest,
                Ok(-1) => SpecOffset::Latest,
                Ok(n) if n >= 0 => SpecOffset::At(n),
                _ => {
                    return Err(invalid(format!(
                        "offset `{o}` is not an offset >= 0, `earliest` (-2) or `latest` (-1)"
                    )))
                }
            },
        };
        let last = match parts.get(3) {
            None => None,
            Some(l) => match l.parse::<i64>() {
                Ok(-1) => None,
                Ok(n) if n >= 0 => Some(n),
                _ => {
                    return Err(invalid(format!(
                        "last `{l}` is not an inclusive end offset >= 0, or -1 for no end"
                    )))
                }
            },
        };
        Ok(TopicSpec {
            topic: topic.to_string(),
            partition,
            offset,
            last,
        })
    }
}

impl fmt::Display for TopicSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.topic)?;
        let Some(p) = self.partition else {
            return Ok(());
        };
        write!(f, ":{p}")?;
        match (self.offset, self.last) {
            (SpecOffset::Earliest, None) => Ok(()),
            (offset, None) => write!(f, ":{offset}"),
            (offset, Some(last)) => write!(f, ":{offset}:{last}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> TopicSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn fields_default_like_tensorflow_io() {
        assert_eq!(parse("t"), TopicSpec::topic("t"));
        let p = parse("t:3");
        assert_eq!(
            (p.partition, p.offset, p.last),
            (Some(3), SpecOffset::Earliest, None)
        );
        let o = parse("t:0:5");
        assert_eq!((o.offset, o.last), (SpecOffset::At(5), None));
        assert_eq!(parse("t:0:0:4"), TopicSpec::range("t", 0, 0, 4));
        assert_eq!(parse("t:0:5:-1").last, None);
        assert_eq!(parse("t:0:-2").offset, SpecOffset::Earliest);
        assert_eq!(parse("t:0:-1").offset, SpecOffset::Latest);
        assert_eq!(parse("t:0:latest:9").offset, SpecOffset::Latest);
        assert_eq!(parse(" my.topic_1-x:0 ").topic, "my.topic_1-x");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "t",
            "t:1",
            "t:1:5",
            "t:1:5:9",
            "t:1:latest",
            "t:1:earliest:9",
        ] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, needle) in [
            ("", "empty"),
            (":0", "empty"),
            ("t:x", "partition `x`"),
            ("t:-1", "partition `-1`"),
            ("t::3", "partition ``"),
            ("t:0:-3", "offset `-3`"),
            ("t:0:abc", "offset `abc`"),
            ("t:0:0:-2", "last `-2`"),
            ("t:0:0:4:9", "5 fields"),
            ("a b", "`  `"),
        ] {
            let e = s.parse::<TopicSpec>().unwrap_err().to_string();
            let needle = if needle == "`  `" { "` `" } else { needle };
            assert!(e.contains(needle), "{s:?}: {e}");
            assert!(e.contains("topic[:partition[:offset[:last]]]"), "{e}");
        }
    }
}
