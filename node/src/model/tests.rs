//! The node's model across restarts: what a crash (no save) must not lose.

use super::*;
use agentmesh_protocol::ids::NodeId;
use agentmesh_store::Store;
use std::path::Path;
use tokio::sync::mpsc;

fn settings(enabled: bool) -> ModelConfig {
    ModelConfig {
        enabled,
        share_secs: crate::config::Secs::new(60),
        min_confidence: 0.0,
        feature_dim: 1 << 10,
        seed: 7,
        save_outcomes: std::num::NonZeroU64::new(3).unwrap(),
        merge_max_accuracy_drop: 0.01,
        max_peer_influence: 0.5,
    }
}

/// A node's model over the store at `dir`, as a node start opens it.
fn open(dir: &Path, enabled: bool) -> (ModelHandle, Store) {
    let store = Store::open(dir).expect("store opens");
    let (changes, _) = mpsc::channel(16);
    let patterns = Patterns::new(
        store.patterns(),
        NodeId([1; 32]),
        changes,
        Default::default(),
    );
    let model = ModelHandle::load(store.model(), patterns, settings(enabled));
    (model, store)
}

fn outcome(text: &str, pattern: &str, success: bool) -> Outcome {
    Outcome {
        context: Context::from_text(text),
        pattern: pattern.into(),
        success,
        at_ms: 0,
    }
}

fn samples() -> Vec<Sample> {
    let mut samples = Vec::new();
    for i in 0..30 {
        for (text, label) in [
            ("parse the json document into a struct", "json"),
            ("retry the request with exponential backoff", "retry"),
        ] {
            samples.push(Sample {
                context: Context::from_text(format!("{text} {i}")),
                label: label.into(),
            });
        }
    }
    samples
}

#[tokio::test]
async fn outcomes_since_the_last_save_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cache = "memoize lookups in an lru cache";
    let before = {
        let (model, store) = open(dir.path(), true);
        // Stored before training, so trained on: not learned again.
        let upload = outcome("retry the flaky upload", "retry", true);
        model.outcome(upload).unwrap();
        model.train(samples(), Some(3)).await.expect("training");
        let saved = model.version();
        let trained = model.recommend(&Context::from_text(cache), 3).unwrap();
        // Learned online and never saved: a crash now loses them unless
        // the restart learns them again.
        assert!(
            model
                .outcome(outcome(cache, "cache", true))
                .unwrap()
                .pattern_added
        );
        assert!(
            model
                .outcome(outcome(cache, "retry", false))
                .unwrap()
                .model_updated
        );
        // Teaches nothing: stored, but the model and its version stay.
        let noop = model.outcome(outcome(cache, "never-learned", false));
        assert!(!noop.unwrap().model_updated);
        assert_eq!(model.version(), saved + 2);
        let answer = model.recommend(&Context::from_text(cache), 3).unwrap();
        assert_ne!(answer.recommendations, trained.recommendations);
        store.flush().await.unwrap();
        answer
    };
    let (model, _store) = open(dir.path(), true);
    let after = model.recommend(&Context::from_text(cache), 3).unwrap();
    assert_eq!(after.model_version, before.model_version);
    // The same steps on the same saved model: the same answer, bit for bit.
    assert_eq!(after.recommendations, before.recommendations);
    let status = model.status();
    assert_eq!(status.stored_outcomes, 4);
    assert!(
        status.classes.iter().any(|c| c == "cache"),
        "{:?}",
        status.classes
    );
    // Saved now with its mark: a second restart learns nothing twice.
    model.save().unwrap();
    drop((model, _store));
    let (model, _store) = open(dir.path(), true);
    let again = model.recommend(&Context::from_text(cache), 3).unwrap();
    assert_eq!(again.model_version, before.model_version);
    assert_eq!(again.recommendations, before.recommendations);
}

#[tokio::test]
async fn the_rules_remember_past_contexts_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let asked = Context::from_text("shard the index by tenant");
    {
        let (model, store) = open(dir.path(), false);
        model
            .outcome(outcome("shard the index by tenant id", "sharding", true))
            .unwrap();
        model
            .outcome(outcome(
                "merge sorted runs from disk",
                "external-sort",
                true,
            ))
            .unwrap();
        let answer = model.recommend(&asked, 1).unwrap();
        assert_eq!(answer.recommendations[0].pattern, "sharding");
        store.flush().await.unwrap();
    }
    let (model, _store) = open(dir.path(), false);
    let answer = model.recommend(&asked, 1).unwrap();
    assert_eq!(answer.source, agentmesh_neural::recommender::Source::Rules);
    assert_eq!(
        answer.recommendations.first().map(|s| s.pattern.as_str()),
        Some("sharding")
    );
}

#[tokio::test]
async fn enough_outcomes_save_the_model_between_sharing_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let (model, store) = open(dir.path(), true);
    model.train(samples(), Some(3)).await.expect("training");
    let trained = model.version();
    // settings(): saved after 3 outcomes the model learned.
    for i in 0..3 {
        let learned = model.outcome(outcome(&format!("retry the call {i}"), "retry", true));
        assert!(learned.unwrap().model_updated);
    }
    assert_eq!(model.version(), trained + 3);
    let saved_version = || {
        let stored = store.model().checkpoint().unwrap();
        let stored = stored.expect("a checkpoint");
        let version = Checkpoint::decode(&stored.bytes).unwrap().version;
        (version, stored.outcomes)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while saved_version().0 != trained + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "sled still holds version {:?}, not {}",
            saved_version(),
            trained + 3
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let last_stored = store.model().outcomes_after(None).last();
    let last_stored = last_stored.map(|item| item.unwrap().0);
    assert_eq!(
        saved_version().1,
        agentmesh_store::OutcomeMark::Through(last_stored.unwrap())
    );
}

#[tokio::test]
async fn a_model_trained_while_switched_off_learns_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let trained = {
        let (model, store) = open(dir.path(), false);
        for i in 0..3 {
            let retry = outcome(&format!("retry the call {i}"), "retry", true);
            model.outcome(retry).unwrap();
        }
        model.train(samples(), Some(3)).await.expect("training");
        store.flush().await.unwrap();
        model.version()
    };
    // Switched on: the model was trained on those outcomes already.
    let (model, _store) = open(dir.path(), true);
    assert_eq!(model.version(), trained);
}
