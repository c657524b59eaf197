//! Between the API's JSON and the replicated pattern state.

use crate::types::{PatternInput, PatternStats, PatternView};
use agentmesh_protocol::pattern::{Content, Edit, Pattern};
use agentmesh_protocol::NodeId;
use std::collections::BTreeMap;

/// The edit an API request asks for; validation happens when it is applied.
pub fn edit_of(input: PatternInput) -> Edit {
    let metadata = input
        .metadata
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    Edit {
        content: Content {
            kind: input.kind,
            name: input.name,
            description: input.description,
            framework: input.framework,
            language: input.language,
            author_agent: input.author_agent,
            body: input.body.to_string(),
            metadata: metadata.to_string(),
        },
        tags: input.tags,
    }
}

fn by_node(map: &BTreeMap<NodeId, u64>) -> BTreeMap<String, u64> {
    map.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

pub fn view(p: &Pattern) -> PatternView {
    let c = &p.content.value;
    // Both were checked to be JSON when the state was accepted.
    let json = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    PatternView {
        id: p.id.clone(),
        version: p.version(),
        timestamp_ms: p.content.stamp.timestamp_ms,
        author_node: p.content.stamp.author.to_string(),
        author_agent: c.author_agent.clone(),
        kind: c.kind.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        framework: c.framework.clone(),
        language: c.language.clone(),
        tags: p.tag_list(),
        body: json(&c.body),
        metadata: json(&c.metadata),
        stats: PatternStats {
            uses: p.uses.value(),
            successes: p.successes.value(),
            failures: p.failures.value(),
            uses_by_node: by_node(&p.uses.0),
        },
        clock: by_node(&p.clock.0),
    }
}
