//! Per-channel message counters, bounded: channel names come from peers, so
//! past `MAX_TRACKED` distinct channels the rest are counted under `(other)`.

use crate::types::ChannelCountersInfo;
use agentmesh_protocol::Channel;
use std::collections::HashMap;

const MAX_TRACKED: usize = 1024;
const OTHER: &str = "(other)";

#[derive(Default, Clone, Copy)]
struct Counts {
    published: u64,
    received: u64,
    rejected: u64,
}

#[derive(Default)]
pub struct ChannelCounters {
    by_channel: HashMap<String, Counts>,
}

impl ChannelCounters {
    fn entry(&mut self, name: &str) -> &mut Counts {
        let key = if self.by_channel.contains_key(name) || self.by_channel.len() < MAX_TRACKED {
            name
        } else {
            OTHER
        };
        self.by_channel.entry(key.to_string()).or_default()
    }

    pub fn published(&mut self, channel: &Channel) {
        self.entry(channel.as_str()).published += 1;
    }

    pub fn received(&mut self, channel: &Channel) {
        self.entry(channel.as_str()).received += 1;
    }

    /// A rejected message may not even have a readable channel; it is
    /// counted under its topic family (`family:*`) when that is known.
    pub fn rejected(&mut self, family: Option<&str>) {
        let name = family.map_or_else(|| OTHER.to_string(), |f| format!("{f}:*"));
        self.entry(&name).rejected += 1;
    }

    pub fn info(&self) -> Vec<ChannelCountersInfo> {
        let mut out: Vec<ChannelCountersInfo> = self
            .by_channel
            .iter()
            .map(|(channel, c)| ChannelCountersInfo {
                channel: channel.clone(),
                published: c.published,
                received: c.received,
                rejected: c.rejected,
            })
            .collect();
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_channels_beyond_the_bound_share_one_bucket() {
        let mut c = ChannelCounters::default();
        for i in 0..(MAX_TRACKED + 10) {
            c.received(&Channel::parse(&format!("spam:{i}")).unwrap());
        }
        let info = c.info();
        assert_eq!(info.len(), MAX_TRACKED + 1);
        let other = info.iter().find(|i| i.channel == OTHER).unwrap();
        assert_eq!(other.received, 10);
    }
}
