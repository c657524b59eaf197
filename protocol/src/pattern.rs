//! Learned patterns: what agents share, as a replicated CRDT state.
//!
//! A [`Pattern`] joins three CRDTs under one id: the content (kind, name,
//! description, framework, language, body, metadata) is a last-writer-wins
//! register ordered by (version, timestamp, author node); tags are an
//! OR-Set; uses, successes and failures are per-node G-Counters. A vector
//! clock counts every local change, so two states can be told apart as
//! ordered or concurrent. Merging two states of one id is a join, so
//! replicas converge whatever order updates reach them in.

use crate::codec::{self, CodecError};
use crate::crdt::{GCounter, LwwRegister, OrSet, Stamp, VectorClock};
use crate::ids::{sha256, NodeId};
use serde::{Deserialize, Serialize};

pub const MAX_ID_LEN: usize = 128;
pub const MAX_KIND_LEN: usize = 64;
pub const MAX_NAME_LEN: usize = 256;
pub const MAX_DESCRIPTION_LEN: usize = 8 * 1024;
/// Framework, language and author agent.
pub const MAX_LABEL_LEN: usize = 128;
/// Tags one write may set.
pub const MAX_EDIT_TAGS: usize = 32;
/// Tags a replicated state may hold: concurrent writes each add up to
/// [`MAX_EDIT_TAGS`] and merges keep them all.
pub const MAX_TAGS: usize = 256;
pub const MAX_TAG_LEN: usize = 64;
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Replicas a pattern's counters, clocks and dot sets may name.
pub const MAX_REPLICAS: usize = 512;
/// Largest encoded pattern accepted from a peer or written to disk (the
/// field limits above all reached at once fit).
pub const MAX_PATTERN_BYTES: usize = 256 * 1024;
/// No honest counter, clock or version gets anywhere near this; a state
/// claiming more would freeze the pattern (its writes could never win).
pub const MAX_COUNT: u64 = 1 << 48;

/// The register's value: everything an author writes at once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Content {
    pub kind: String,
    pub name: String,
    pub description: String,
    pub framework: Option<String>,
    pub language: Option<String>,
    /// The agent that wrote this version (free-form, given by the agent).
    pub author_agent: String,
    /// Template or example: JSON text, kept as written so every replica
    /// hashes the same bytes.
    pub body: String,
    /// A JSON object, as text.
    pub metadata: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern {
    pub id: String,
    pub content: LwwRegister<Content>,
    pub tags: OrSet<String>,
    pub uses: GCounter,
    pub successes: GCounter,
    pub failures: GCounter,
    pub clock: VectorClock,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> PatternError {
    PatternError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Ids are what agents and URLs use: letters, digits and `._:-`.
pub fn validate_id(id: &str) -> Result<(), PatternError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid("id", format!("must be 1 to {MAX_ID_LEN} bytes")));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:-".contains(*c)))
    {
        return Err(invalid(
            "id",
            format!("character {c:?} not allowed (letters, digits and . _ : - only)"),
        ));
    }
    Ok(())
}

fn check_text(
    field: &'static str,
    text: &str,
    max: usize,
    required: bool,
) -> Result<(), PatternError> {
    if required && text.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if text.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

pub fn validate_tag(tag: &str) -> Result<(), PatternError> {
    check_text("tags", tag, MAX_TAG_LEN, true)?;
    if tag.contains(char::is_whitespace) {
        return Err(invalid("tags", format!("tag {tag:?} contains whitespace")));
    }
    Ok(())
}

impl Content {
    pub fn validate(&self) -> Result<(), PatternError> {
        check_text("kind", &self.kind, MAX_KIND_LEN, true)?;
        check_text("name", &self.name, MAX_NAME_LEN, true)?;
        check_text("description", &self.description, MAX_DESCRIPTION_LEN, false)?;
        for (field, value) in [("framework", &self.framework), ("language", &self.language)] {
            if let Some(v) = value {
                check_text(field, v, MAX_LABEL_LEN, true)?;
            }
        }
        check_text("author_agent", &self.author_agent, MAX_LABEL_LEN, false)?;
        if self.body.len() > MAX_BODY_BYTES {
            return Err(invalid(
                "body",
                format!("larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        // Checked without building the value: this runs for every pattern
        // a peer sends.
        serde_json::from_str::<serde::de::IgnoredAny>(&self.body)
            .map_err(|e| invalid("body", format!("not JSON: {e}")))?;
        if self.metadata.len() > MAX_METADATA_BYTES {
            return Err(invalid(
                "metadata",
                format!("larger than {MAX_METADATA_BYTES} bytes"),
            ));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&self.metadata)
            .map_err(|e| invalid("metadata", format!("not JSON: {e}")))?;
        if !self.metadata.trim_start().starts_with('{') {
            return Err(invalid("metadata", "must be a JSON object"));
        }
        Ok(())
    }
}

/// What a local write changes.
#[derive(Clone, Debug)]
pub struct Edit {
    pub content: Content,
    pub tags: Vec<String>,
}

impl Edit {
    /// What a state may hold but one write may not; the rest is checked on
    /// the resulting state.
    fn validate(&self) -> Result<(), PatternError> {
        if self.tags.len() > MAX_EDIT_TAGS {
            return Err(invalid("tags", format!("more than {MAX_EDIT_TAGS}")));
        }
        Ok(())
    }
}

impl Pattern {
    /// A new pattern written by `node` at `now_ms`.
    pub fn create(
        id: String,
        edit: Edit,
        node: NodeId,
        now_ms: u64,
    ) -> Result<Pattern, PatternError> {
        validate_id(&id)?;
        let mut pattern = Pattern {
            id,
            content: LwwRegister::new(
                Stamp {
                    version: 1,
                    timestamp_ms: now_ms,
                    author: node,
                },
                edit.content.clone(),
            ),
            tags: OrSet::default(),
            uses: GCounter::default(),
            successes: GCounter::default(),
            failures: GCounter::default(),
            clock: VectorClock::default(),
        };
        pattern.set_tags(node, &edit.tags);
        pattern.clock.tick(node);
        pattern.validate()?;
        Ok(pattern)
    }

    /// A local update: the next version of the content, and the tags set
    /// to `edit.tags` (tags not listed are removed as observed here).
    pub fn update(&mut self, edit: Edit, node: NodeId, now_ms: u64) -> Result<(), PatternError> {
        edit.validate()?;
        let mut next = self.clone();
        next.content = LwwRegister::new(
            Stamp {
                version: self.content.stamp.version.saturating_add(1),
                // Never behind the version it replaces, whatever the clocks say.
                timestamp_ms: now_ms.max(self.content.stamp.timestamp_ms),
                author: node,
            },
            edit.content,
        );
        next.set_tags(node, &edit.tags);
        next.clock.tick(node);
        next.validate()?;
        *self = next;
        Ok(())
    }

    fn set_tags(&mut self, node: NodeId, tags: &[String]) {
        let current: Vec<String> = self.tags.elements().cloned().collect();
        for old in current.iter().filter(|t| !tags.contains(t)) {
            self.tags.remove(old);
        }
        for tag in tags {
            if !self.tags.contains(tag) {
                self.tags.add(node, tag.clone());
            }
        }
    }

    /// One use of the pattern by an agent of `node`, and how it went.
    pub fn record_outcome(&mut self, node: NodeId, success: bool) {
        self.uses.increment(node, 1);
        if success {
            self.successes.increment(node, 1);
        } else {
            self.failures.increment(node, 1);
        }
        self.clock.tick(node);
    }

    /// Joins `other` (a state of the same id) into this one; true if
    /// anything changed. The join of two valid states can exceed the
    /// limits (more tags or replicas than a state may hold): see
    /// [`Pattern::merged`].
    pub fn merge(&mut self, other: &Pattern) -> bool {
        let before = self.clone();
        self.join(other);
        *self != before
    }

    fn join(&mut self, other: &Pattern) {
        self.content.merge(&other.content);
        self.tags.merge(&other.tags);
        self.uses.merge(&other.uses);
        self.successes.merge(&other.successes);
        self.failures.merge(&other.failures);
        self.clock.merge(&other.clock);
    }

    /// The join of this state and `other` and its encoding, if it changes
    /// this one and stays within the limits; `Err` names the limit the join
    /// would break (the caller keeps its state and counts the refusal).
    pub fn merged(&self, other: &Pattern) -> Result<Option<(Pattern, Vec<u8>)>, PatternError> {
        let mut joined = self.clone();
        joined.join(other);
        if joined == *self {
            return Ok(None);
        }
        joined.validate()?;
        let bytes = joined.encode()?;
        Ok(Some((joined, bytes)))
    }

    pub fn version(&self) -> u64 {
        self.content.stamp.version
    }

    pub fn tag_list(&self) -> Vec<String> {
        self.tags.elements().cloned().collect()
    }

    /// Checks a state from anywhere (a peer, the disk) before it is merged.
    pub fn validate(&self) -> Result<(), PatternError> {
        validate_id(&self.id)?;
        self.content.value.validate()?;
        if self.tags.len() > MAX_TAGS {
            return Err(invalid("tags", format!("more than {MAX_TAGS}")));
        }
        for tag in self.tags.elements() {
            validate_tag(tag)?;
        }
        let replicas = [
            self.uses.len(),
            self.successes.len(),
            self.failures.len(),
            self.clock.len(),
            self.tags.clock.len(),
            self.tags.max_dots(),
        ];
        if replicas.iter().any(|&n| n > MAX_REPLICAS) {
            return Err(invalid(
                "replicas",
                format!("counters, clocks or tags name more than {MAX_REPLICAS} nodes"),
            ));
        }
        let counts = [
            &self.uses.0,
            &self.successes.0,
            &self.failures.0,
            &self.clock.0,
            &self.tags.clock.0,
        ];
        if self.version() >= MAX_COUNT || counts.iter().any(|m| m.values().any(|&n| n >= MAX_COUNT))
        {
            return Err(invalid(
                "counts",
                format!("a version, counter or clock of {MAX_COUNT} or more"),
            ));
        }
        // Every tag is there by some add the set's clock has seen; a state
        // breaking this would not merge as a join.
        for (tag, dots) in &self.tags.entries {
            if dots.is_empty() || dots.iter().any(|(node, n)| self.tags.clock.get(node) < *n) {
                return Err(invalid(
                    "tags",
                    format!("tag {tag:?} has add events its clock has not seen"),
                ));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, PatternError> {
        let bytes = codec::encode(self)?;
        if bytes.len() > MAX_PATTERN_BYTES {
            return Err(invalid(
                "pattern",
                format!("encodes to more than {MAX_PATTERN_BYTES} bytes"),
            ));
        }
        Ok(bytes)
    }

    /// Decodes and validates.
    pub fn decode(bytes: &[u8]) -> Result<Pattern, PatternError> {
        let pattern: Pattern = codec::decode(bytes, MAX_PATTERN_BYTES)?;
        pattern.validate()?;
        Ok(pattern)
    }
}

/// What anti-entropy compares: SHA-256 of the canonical encoding. Equal
/// digests mean equal states.
pub fn digest(encoded: &[u8]) -> [u8; 32] {
    sha256(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    pub fn edit(name: &str, tags: &[&str]) -> Edit {
        Edit {
            content: Content {
                kind: "template".into(),
                name: name.into(),
                description: "retry with backoff".into(),
                framework: Some("tokio".into()),
                language: Some("rust".into()),
                author_agent: "agent-1".into(),
                body: r#"{"steps":[1,2]}"#.into(),
                metadata: "{}".into(),
            },
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn concurrent_updates_converge_to_the_higher_stamp() {
        let p = Pattern::create("p1".into(), edit("one", &["a"]), node(1), 100).unwrap();
        let mut a = p.clone();
        let mut b = p.clone();
        a.update(edit("from a", &["a", "b"]), node(1), 200).unwrap();
        b.update(edit("from b", &["c"]), node(2), 150).unwrap();
        let mut ab = a.clone();
        assert!(ab.merge(&b));
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.content.value.name, "from a");
        assert_eq!(ab.version(), 2);
        // b removed "a" concurrently with a re-keeping it (a did not re-add,
        // so b's observed remove wins); "b" and "c" were added.
        assert_eq!(ab.tag_list(), vec!["b".to_string(), "c".to_string()]);
        // Applying the same state twice changes nothing.
        assert!(!ab.merge(&b));
    }

    #[test]
    fn outcomes_from_every_node_add_up() {
        let p = Pattern::create("p1".into(), edit("one", &[]), node(1), 1).unwrap();
        let mut a = p.clone();
        let mut b = p;
        a.record_outcome(node(1), true);
        a.record_outcome(node(1), false);
        b.record_outcome(node(2), true);
        a.merge(&b);
        assert_eq!(
            (a.uses.value(), a.successes.value(), a.failures.value()),
            (3, 2, 1)
        );
    }

    #[test]
    fn invalid_content_is_named() {
        let mut e = edit("x", &[]);
        e.content.body = "{not json".into();
        let err = Pattern::create("p".into(), e, node(1), 1).unwrap_err();
        assert!(err.to_string().starts_with("body: not JSON"), "{err}");
        let err = Pattern::create("bad id!".into(), edit("x", &[]), node(1), 1).unwrap_err();
        assert!(err.to_string().starts_with("id:"), "{err}");
        let err = Pattern::create("p".into(), edit("x", &["two words"]), node(1), 1).unwrap_err();
        assert!(err.to_string().starts_with("tags:"), "{err}");
        let mut e = edit("x", &[]);
        e.content.metadata = "[1]".into();
        let err = Pattern::create("p".into(), e, node(1), 1).unwrap_err();
        assert_eq!(err.to_string(), "metadata: must be a JSON object");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Update {
            name: u8,
            tags: Vec<u8>,
        },
        Outcome(bool),
        /// Merge another replica's state into this one.
        Pull(usize),
    }

    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), proptest::collection::vec(0u8..6, 0..4))
                .prop_map(|(name, tags)| Op::Update { name, tags }),
            any::<bool>().prop_map(Op::Outcome),
            any::<usize>().prop_map(Op::Pull),
        ]
    }

    proptest::proptest! {
        /// Whole patterns, through the same calls the node makes: 3 to 5
        /// replicas create the pattern concurrently, update it, count uses
        /// and exchange states in random orders; merging every final state
        /// in any order gives one valid state, and the counts add up.
        #[test]
        fn pattern_replicas_converge(
            ops in (3usize..=5).prop_flat_map(|n| proptest::collection::vec(
                proptest::collection::vec(op(), 0..10), n)),
            schedule in proptest::collection::vec(any_index(), 0..50),
            order in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let n = ops.len();
            let mut replicas: Vec<Pattern> = (0..n)
                .map(|r| Pattern::create("p".into(), edit("start", &["t0"]), node(r as u8), 100 + r as u64).unwrap())
                .collect();
            let mut next = vec![0usize; n];
            let mut time = 1_000;
            let steps: Vec<usize> = schedule.iter().map(|i| i % n).chain((0..n).flat_map(|r| std::iter::repeat_n(r, 10))).collect();
            let mut outcomes = 0u64;
            for r in steps {
                let Some(op) = ops[r].get(next[r]).cloned() else { continue };
                next[r] += 1;
                time += 1;
                match op {
                    Op::Update { name, tags } => {
                        let tags: Vec<String> = tags.iter().map(|t| format!("t{t}")).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                        replicas[r].update(edit(&format!("n{name}"), &tags), node(r as u8), time).unwrap();
                    }
                    Op::Outcome(success) => {
                        replicas[r].record_outcome(node(r as u8), success);
                        outcomes += 1;
                    }
                    Op::Pull(other) => {
                        let other = replicas[other % n].clone();
                        replicas[r].merge(&other);
                    }
                }
            }
            let mut forward = replicas[0].clone();
            for p in &replicas[1..] { forward.merge(p); }
            let mut shuffled = replicas[order.iter().copied().find(|&i| i < n).unwrap()].clone();
            for &i in order.iter().filter(|&&i| i < n) { shuffled.merge(&replicas[i]); }
            proptest::prop_assert_eq!(&forward, &shuffled);
            proptest::prop_assert_eq!(forward.encode().unwrap(), shuffled.encode().unwrap());
            let mut again = forward.clone();
            proptest::prop_assert!(!again.merge(&shuffled));
            forward.validate().unwrap();
            proptest::prop_assert_eq!(forward.uses.value(), outcomes);
            proptest::prop_assert_eq!(
                forward.successes.value() + forward.failures.value(),
                outcomes
            );
        }
    }

    fn any_index() -> impl Strategy<Value = usize> {
        any::<usize>()
    }

    #[test]
    fn a_state_whose_tags_its_clock_has_not_seen_is_refused() {
        let mut p = Pattern::create("p".into(), edit("x", &["a"]), node(1), 1).unwrap();
        p.tags.clock = Default::default();
        let err = Pattern::decode(&codec::encode(&p).unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("tags:"), "{err}");
        let mut p = Pattern::create("p".into(), edit("x", &[]), node(1), 1).unwrap();
        p.content.stamp.version = u64::MAX;
        assert!(Pattern::decode(&codec::encode(&p).unwrap()).is_err());
    }

    #[test]
    fn encoding_round_trips_and_is_canonical() {
        let mut p = Pattern::create("p".into(), edit("x", &["t1", "t2"]), node(1), 5).unwrap();
        p.record_outcome(node(3), true);
        let bytes = p.encode().unwrap();
        let back = Pattern::decode(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.encode().unwrap(), bytes);
        assert!(Pattern::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
