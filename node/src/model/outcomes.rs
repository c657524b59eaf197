//! Reading the stored outcomes back: for a training run, for the outcomes
//! reported while it ran, and at start-up, when the rules learn them all
//! again and the model those after its checkpoint's mark.

use super::{LocalModel, ModelError, Outcome};
use agentmesh_neural::Sample;
use agentmesh_protocol::codec;
use agentmesh_store::{ModelStore, OutcomeMark, StoreError};

/// Largest outcome record stored (and decoded).
pub(super) const MAX_OUTCOME_BYTES: usize = 256 * 1024;

/// Stored outcomes after sequence number `after` with their sequence
/// numbers, decoded as they are read (damaged records and keys are
/// skipped and reported; a storage failure ends the reading).
fn read_outcomes(
    store: &ModelStore,
    after: Option<u64>,
) -> impl Iterator<Item = Result<(u64, Option<Outcome>), ModelError>> + use<> {
    store.outcomes_after(after).filter_map(|item| match item {
        Ok((seq, bytes)) => match codec::decode::<Outcome>(&bytes, MAX_OUTCOME_BYTES) {
            Ok(o) => Some(Ok((seq, Some(o)))),
            Err(e) => {
                tracing::warn!(seq, error = %e, "skipping a damaged stored outcome");
                Some(Ok((seq, None)))
            }
        },
        Err(e @ StoreError::Corrupt { .. }) => {
            tracing::warn!(error = %e, "skipping a damaged stored outcome");
            None
        }
        Err(e) => Some(Err(e.into())),
    })
}

/// The stored outcomes after `after`, and the last sequence number read.
pub(super) fn stored_outcomes(
    store: &ModelStore,
    after: Option<u64>,
) -> Result<(Vec<Outcome>, Option<u64>), ModelError> {
    let mut outcomes = Vec::new();
    let mut last = after;
    for item in read_outcomes(store, after) {
        let (seq, outcome) = item?;
        last = Some(seq);
        outcomes.extend(outcome);
    }
    Ok((outcomes, last))
}

/// Learns the stored outcomes again at start-up (see
/// [`ModelHandle::load`]): the model those after `mark` (none while it is
/// off or untrained: it learns no outcome then, and training reads them
/// all).
/// New patterns are kept off `guard` as when they were first learned.
pub(super) fn learn_stored_outcomes(
    store: &ModelStore,
    local: &mut LocalModel,
    mark: OutcomeMark,
    guard: &[Sample],
) {
    let trained = local.config().model_enabled && local.model().is_some();
    let mut relearned = 0;
    for item in read_outcomes(store, None) {
        let (seq, outcome) = match item {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the stored outcomes");
                break;
            }
        };
        local.outcomes_through = Some(seq);
        let Some(o) = outcome else { continue };
        local.learn_rules(&o.context, &o.pattern, o.success);
        let after_mark = match mark {
            OutcomeMark::Through(through) => seq > through,
            OutcomeMark::NoneYet => true,
            OutcomeMark::Unknown => false,
        };
        if trained && after_mark {
            local.learn_model(&o.context, &o.pattern, o.success, guard);
            relearned += 1;
        }
    }
    if relearned > 0 {
        tracing::info!(
            outcomes = relearned,
            version = local.version(),
            "outcomes after the saved model learned again"
        );
    }
}
