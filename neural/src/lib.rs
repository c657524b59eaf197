//! The local pattern recommender: deterministic context features, the MLP
//! on Burn (ndarray backend, CPU), training with a seeded split
//! and early stopping, held-out metrics, and the rule-based recommender it
//! must beat.

pub mod baseline;
pub mod calibrate;
pub mod checkpoint;
pub mod classifier;
pub mod dataset;
pub mod error;
pub mod features;
mod floats;
pub mod imprint;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod recommender;

pub use classifier::{train, Classifier, TrainConfig, TrainReport};
pub use dataset::{Context, Sample};
pub use error::NeuralError;
