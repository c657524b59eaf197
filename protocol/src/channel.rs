//! Channel names and subscription patterns.
//!
//! A channel name is one or more segments joined by `:` (`coordination`,
//! `task:assigned`, `metrics:cpu`). The first segment is the channel's
//! *family*; each family is carried by one gossipsub topic and the full name
//! travels inside the envelope. That is what makes prefix subscriptions such
//! as `metrics:*` work without knowing in advance which channels exist: the
//! subscriber joins the family's topic and filters locally.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name {0:?} has an empty segment (segments are separated by ':')")]
    EmptySegment(String),
    #[error("channel name {0:?} contains {1:?}; allowed are letters, digits, '-', '_', '.' and ':' between segments")]
    InvalidChar(String, char),
    #[error("subscription pattern {0:?} is invalid: a prefix pattern ends in ':*' (for example 'metrics:*')")]
    InvalidPattern(String),
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Channel(String);

impl Channel {
    pub fn parse(name: &str) -> Result<Channel, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        for segment in name.split(':') {
            if segment.is_empty() {
                return Err(ChannelError::EmptySegment(name.to_string()));
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err(ChannelError::InvalidChar(name.to_string(), c));
            }
        }
        Ok(Channel(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first segment: the unit of gossip topic membership.
    pub fn family(&self) -> &str {
        self.0.split(':').next().unwrap_or(&self.0)
    }
}

impl TryFrom<String> for Channel {
    type Error = ChannelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Channel::parse(&s)
    }
}

impl From<Channel> for String {
    fn from(c: Channel) -> String {
        c.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({})", self.0)
    }
}

/// What a local subscriber asked for: one channel, or every channel below a
/// prefix (`metrics:*` matches `metrics:cpu` and `metrics:disk:sda`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChannelPattern {
    Exact(Channel),
    Prefix(Channel),
}

impl ChannelPattern {
    pub fn parse(pattern: &str) -> Result<ChannelPattern, ChannelError> {
        match pattern.strip_suffix(":*") {
            Some(prefix) => Channel::parse(prefix)
                .map(ChannelPattern::Prefix)
                .map_err(|_| ChannelError::InvalidPattern(pattern.to_string())),
            None if pattern.contains('*') => Err(ChannelError::InvalidPattern(pattern.to_string())),
            None => Channel::parse(pattern).map(ChannelPattern::Exact),
        }
    }

    pub fn family(&self) -> &str {
        match self {
            ChannelPattern::Exact(c) | ChannelPattern::Prefix(c) => c.family(),
        }
    }

    pub fn matches(&self, channel: &Channel) -> bool {
        match self {
            ChannelPattern::Exact(c) => c == channel,
            ChannelPattern::Prefix(p) => channel
                .as_str()
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with(':')),
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelPattern::Exact(c) => write!(f, "{c}"),
            ChannelPattern::Prefix(c) => write!(f, "{c}:*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_channels_parse_with_their_family() {
        for (name, family) in [
            ("coordination", "coordination"),
            ("agent:status", "agent"),
            ("task:assigned", "task"),
            ("metrics:cpu", "metrics"),
            ("learning:model", "learning"),
        ] {
            assert_eq!(Channel::parse(name).unwrap().family(), family);
        }
    }

    #[test]
    fn bad_names_are_rejected_with_the_reason() {
        assert_eq!(Channel::parse(""), Err(ChannelError::Empty));
        assert!(matches!(
            Channel::parse("a::b"),
            Err(ChannelError::EmptySegment(_))
        ));
        assert!(matches!(
            Channel::parse("a b"),
            Err(ChannelError::InvalidChar(_, ' '))
        ));
        assert_eq!(Channel::parse(&"x".repeat(129)), Err(ChannelError::TooLong));
    }

    #[test]
    fn prefix_patterns_match_whole_segments_only() {
        let p = ChannelPattern::parse("metrics:*").unwrap();
        assert!(p.matches(&Channel::parse("metrics:cpu").unwrap()));
        assert!(p.matches(&Channel::parse("metrics:disk:sda").unwrap()));
        assert!(!p.matches(&Channel::parse("metrics").unwrap()));
        assert!(!p.matches(&Channel::parse("metricsx:cpu").unwrap()));
        assert!(ChannelPattern::parse("met*").is_err());
        assert!(ChannelPattern::parse("*").is_err());
        assert!(ChannelPattern::parse(":*").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepted_names_roundtrip(s in "\\PC{0,40}") {
            if let Ok(c) = Channel::parse(&s) {
                prop_assert_eq!(c.as_str(), s.as_str());
                prop_assert!(s.starts_with(c.family()));
            }
            let _ = ChannelPattern::parse(&s);
        }

        #[test]
        fn a_prefix_pattern_matches_every_channel_below_it(
            prefix in "[a-z]{1,5}(:[a-z]{1,5}){0,2}",
            rest in "[a-z0-9]{1,5}(:[a-z]{1,3}){0,2}",
        ) {
            let pattern = ChannelPattern::parse(&format!("{prefix}:*")).unwrap();
            let channel = Channel::parse(&format!("{prefix}:{rest}")).unwrap();
            prop_assert!(pattern.matches(&channel));
            prop_assert_eq!(pattern.family(), channel.family());
        }
    }
}
