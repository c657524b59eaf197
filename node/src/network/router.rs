//! The channel router: local subscribers per channel family, and which
//! gossipsub topics the node has to be in for them.
//!
//! Each family has one bounded broadcast queue; every subscriber of the
//! family reads the same queue and filters by its own pattern, so a message
//! is copied once however many subscribers there are. A subscriber that
//! falls more than `buffer` messages behind misses messages and is told how
//! many (it never blocks the node).

use agentmesh_protocol::{ChannelPattern, Envelope};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Debug)]
pub struct Delivery {
    pub envelope: Envelope,
    pub received_ms: u64,
}

pub struct Subscription {
    pub pattern: ChannelPattern,
    pub receiver: broadcast::Receiver<Arc<Delivery>>,
}

impl Subscription {
    /// Waits for the next message matching this subscription's pattern.
    /// `Err(n)` means `n` messages were dropped because the reader lagged.
    pub async fn next(&mut self) -> Option<Result<Arc<Delivery>, u64>> {
        loop {
            match self.receiver.recv().await {
                Ok(d) if self.pattern.matches(&d.envelope.channel) => return Some(Ok(d)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Err(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

pub struct Router {
    families: HashMap<String, broadcast::Sender<Arc<Delivery>>>,
    buffer: usize,
}

impl Router {
    pub fn new(buffer: usize) -> Router {
        Router {
            families: HashMap::new(),
            buffer,
        }
    }

    /// Adds a subscriber. Returns the subscription and whether its family is
    /// new (the caller then joins the family's gossip topic).
    pub fn subscribe(&mut self, pattern: ChannelPattern) -> (Subscription, bool) {
        let family = pattern.family().to_string();
        let mut is_new = false;
        let sender = self.families.entry(family).or_insert_with(|| {
            is_new = true;
            broadcast::channel(self.buffer).0
        });
        let receiver = sender.subscribe();
        (Subscription { pattern, receiver }, is_new)
    }

    /// Hands a message to the local subscribers of its family; returns how
    /// many subscriber streams it reached.
    pub fn deliver(&self, delivery: Arc<Delivery>) -> usize {
        match self.families.get(delivery.envelope.channel.family()) {
            Some(sender) => sender.send(delivery).unwrap_or(0),
            None => 0,
        }
    }

    pub fn local_subscribers(&self, family: &str) -> usize {
        self.families.get(family).map_or(0, |s| s.receiver_count())
    }

    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.families.keys().map(String::as_str)
    }

    /// Forgets families whose subscribers have all gone and returns them, so
    /// the caller can leave their gossip topics.
    pub fn collect_unused(&mut self) -> Vec<String> {
        let unused: Vec<String> = self
            .families
            .iter()
            .filter(|(_, s)| s.receiver_count() == 0)
            .map(|(f, _)| f.clone())
            .collect();
        for f in &unused {
            self.families.remove(f);
        }
        unused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_protocol::{Channel, MessageId, NodeId};

    fn delivery(channel: &str, n: u8) -> Arc<Delivery> {
        Arc::new(Delivery {
            envelope: Envelope {
                channel: Channel::parse(channel).unwrap(),
                id: MessageId([n; 16]),
                sender: NodeId([0; 32]),
                timestamp_ms: 0,
                content_type: "text/plain".into(),
                body: vec![n],
            },
            received_ms: 0,
        })
    }

    #[tokio::test]
    async fn exact_and_prefix_subscribers_each_get_their_messages_once() {
        let mut router = Router::new(16);
        let (mut cpu, new1) = router.subscribe(ChannelPattern::parse("metrics:cpu").unwrap());
        let (mut all, new2) = router.subscribe(ChannelPattern::parse("metrics:*").unwrap());
        let (mut coord, _) = router.subscribe(ChannelPattern::parse("coordination").unwrap());
        assert!(new1 && !new2);
        assert_eq!(router.deliver(delivery("metrics:cpu", 1)), 2);
        router.deliver(delivery("metrics:disk", 2));
        router.deliver(delivery("coordination", 3));
        assert_eq!(cpu.next().await.unwrap().unwrap().envelope.body, vec![1]);
        assert_eq!(all.next().await.unwrap().unwrap().envelope.body, vec![1]);
        assert_eq!(all.next().await.unwrap().unwrap().envelope.body, vec![2]);
        assert_eq!(coord.next().await.unwrap().unwrap().envelope.body, vec![3]);
        router.deliver(delivery("metrics:cpu", 4));
        assert_eq!(cpu.next().await.unwrap().unwrap().envelope.body, vec![4]);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed() {
        let mut router = Router::new(2);
        let (mut sub, _) = router.subscribe(ChannelPattern::parse("coordination").unwrap());
        for n in 0..5 {
            router.deliver(delivery("coordination", n));
        }
        assert_eq!(sub.next().await.unwrap().unwrap_err(), 3);
        assert_eq!(sub.next().await.unwrap().unwrap().envelope.body, vec![3]);
    }

    #[test]
    fn families_without_subscribers_are_collected() {
        let mut router = Router::new(2);
        let (sub, _) = router.subscribe(ChannelPattern::parse("task:*").unwrap());
        assert!(router.collect_unused().is_empty());
        drop(sub);
        assert_eq!(router.collect_unused(), vec!["task".to_string()]);
        assert_eq!(router.families().count(), 0);
    }
}
