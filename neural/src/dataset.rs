//! Training data: JSON lines of `{"context": {...}, "label": "pattern-id"}`,
//! and the seeded 70/20/10 split (the same one `scripts/model/baseline.py`
//! computes, so both classifiers are measured on the same test part).

use crate::error::NeuralError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What an agent is doing when it asks for a recommendation. Only `text`
/// is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub text: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub code_type: Option<String>,
    #[serde(default)]
    pub framework: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    /// Numeric metadata (file count, error count, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub context: Context,
    pub label: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{0} holds no samples")]
    Empty(String),
}

/// Longest accepted context text, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

impl Context {
    /// A context of free text only.
    pub fn from_text(text: impl Into<String>) -> Context {
        Context {
            text: text.into(),
            ..Context::default()
        }
    }

    /// Checks what a caller (agent, file) sent; names the problem.
    pub fn validate(&self) -> Result<(), NeuralError> {
        if self.text.trim().is_empty() {
            return Err(NeuralError::InvalidData("context.text is empty".into()));
        }
        if self.text.len() > MAX_TEXT_BYTES {
            return Err(NeuralError::InvalidData(format!(
                "context.text is {} bytes; at most {MAX_TEXT_BYTES} are accepted",
                self.text.len()
            )));
        }
        if self.keywords.len() > 256 {
            return Err(NeuralError::InvalidData(
                "context.keywords has more than 256 entries".into(),
            ));
        }
        if self.metadata.len() > 64 {
            return Err(NeuralError::InvalidData(
                "context.metadata has more than 64 entries".into(),
            ));
        }
        if let Some((key, _)) = self.metadata.iter().find(|(_, v)| !v.is_finite()) {
            return Err(NeuralError::InvalidData(format!(
                "context.metadata.{key} is not a finite number"
            )));
        }
        Ok(())
    }
}

/// Reads a JSONL file; a bad line is reported with its number.
pub fn load_jsonl(path: &Path) -> Result<Vec<Sample>, DatasetError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Read {
        path: name.clone(),
        source,
    })?;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| DatasetError::Line {
            path: name.clone(),
            line: i + 1,
            reason,
        };
        let sample: Sample = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        sample.context.validate().map_err(|e| bad(e.to_string()))?;
        if sample.label.trim().is_empty() || sample.label.len() > 128 {
            return Err(bad("label must be 1 to 128 characters".into()));
        }
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err(DatasetError::Empty(name));
    }
    Ok(samples)
}

const MASK_GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: a tiny, well-known mixing function, written out so the
/// Python baseline can compute the same split.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(MASK_GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Indices of the train, validation and test parts (70/20/10) of `n`
/// samples: ordered by `splitmix64(seed ^ i)`.
pub fn split(n: usize, seed: u64) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (splitmix64(seed ^ i as u64), i));
    let n_train = n * 7 / 10;
    let n_val = n * 2 / 10;
    let test = order.split_off(n_train + n_val);
    let val = order.split_off(n_train);
    (order, val, test)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn splits_are_seeded_disjoint_and_complete() {
        let (a, b, c) = split(1000, 7);
        assert_eq!((a.len(), b.len(), c.len()), (700, 200, 100));
        let mut all: Vec<usize> = a.iter().chain(&b).chain(&c).copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(split(1000, 7), (a, b, c));
        assert_ne!(split(1000, 8).2, split(1000, 7).2);
        // The value scripts/model/baseline.py computes for the same input.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let cases = [
            (
                "{\"context\":{\"text\":\"a\"},\"label\":\"x\"}\nnot json\n",
                "line 2",
            ),
            ("{\"context\":{\"text\":\"a\"}}\n", "line 1"),
            (
                "{\"context\":{\"text\":\"\"},\"label\":\"x\"}\n",
                "context.text is empty",
            ),
            ("\n\n", "holds no samples"),
        ];
        for (content, expected) in cases {
            std::fs::File::create(&path)
                .unwrap()
                .write_all(content.as_bytes())
                .unwrap();
            let e = load_jsonl(&path).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }
}
