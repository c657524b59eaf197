//! The one error type of the crate's fallible functions, by cause, so a
//! caller can tell its own bad input from a peer's bad model or a build
//! that lacks a backend. Each variant carries the human-readable reason,
//! which is what it displays.

/// Why a call into the model failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NeuralError {
    /// Settings out of range: a feature configuration
    /// ([`FeatureConfig::validate`](crate::features::FeatureConfig::validate)),
    /// or a training configuration that runs no epoch.
    #[error("{0}")]
    InvalidConfig(String),
    /// Samples or contexts that cannot be used: a context that fails
    /// [`Context::validate`](crate::dataset::Context::validate), too few
    /// labels or samples to train on.
    #[error("{0}")]
    InvalidData(String),
    /// A checkpoint that cannot be encoded or decoded, of a format this
    /// build does not read, or whose features, label map and weights do
    /// not make a model (so no classifier can be built from it).
    #[error("{0}")]
    Checkpoint(String),
    /// Models that cannot be merged: none usable or compatible (another
    /// format, feature dimension or norm, broken parts), or too many
    /// patterns together.
    #[error("{0}")]
    Incompatible(String),
    /// The backend asked for is not built in, or another one was chosen
    /// already ([`set_backend`](crate::model::set_backend)).
    #[error("{0}")]
    Backend(String),
}
