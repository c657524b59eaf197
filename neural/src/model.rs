//! The network: input → 256 → 128 → 64 → one output per
//! pattern, ReLU between layers, dropout 0.2/0.2/0.1 while training.
//!
//! The first layer is an [`InputLayer`] of plain rows, not a Burn
//! `Linear`: a context has a few hundred non-zero features among 2^16, so
//! its product with the input weights is the sum of those few rows (an
//! embedding bag), and its gradient touches only them. A dense layer would
//! multiply and update all 16.7 million input weights for every batch —
//! 82 s an epoch at 2^16 here, against about a second this way. The rest
//! of the network ([`Tail`]) is a Burn module trained by Burn's autodiff;
//! the gradient it hands back for its input drives the first layer.
//!
//! Weights move in and out as plain `f32` vectors ([`Weights`]), which is
//! what checkpoints store, peers exchange and merges average.

use crate::error::NeuralError;
use burn::module::{Module, Param};
use burn::nn::{Linear, Relu};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::SmallRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub const HIDDEN: [usize; 3] = [256, 128, 64];
const DROPOUT: [f64; 3] = [0.2, 0.2, 0.1];

/// The CPU backends the model can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn-ndarray, as the design asks (burn 0.22 marks it deprecated).
    Ndarray,
    /// burn-flex, burn's successor to it (built with the `flex` feature).
    Flex,
}

static BACKEND: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

/// Chooses the backend for the whole process, before any model exists:
/// tensors of two backends do not mix, so it is set once.
pub fn set_backend(backend: Backend) -> Result<(), NeuralError> {
    if backend == Backend::Flex && !cfg!(feature = "flex") {
        return Err(NeuralError::Backend(
            "this build has no flex backend (build with --features flex)".into(),
        ));
    }
    match BACKEND.get_or_init(|| backend) {
        chosen if *chosen == backend => Ok(()),
        chosen => Err(NeuralError::Backend(format!(
            "the backend is {chosen:?} already"
        ))),
    }
}

/// The backend in use; fixed from the first use on.
pub fn backend() -> Backend {
    *BACKEND.get_or_init(|| Backend::Ndarray)
}

/// The CPU device the model runs on; the backend is chosen in this one
/// place so it can move.
#[allow(deprecated)]
pub fn cpu() -> Device {
    match backend() {
        #[cfg(feature = "flex")]
        Backend::Flex => Device::flex(),
        _ => Device::ndarray(),
    }
}

/// A sparse input vector: (feature index, value), indices ascending.
pub type SparseVec = Vec<(u32, f32)>;

/// One dense layer: `weight[i * d_out + o]` connects input i to output o.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerWeights {
    pub d_in: usize,
    pub d_out: usize,
    #[serde(with = "crate::floats")]
    pub weight: Vec<f32>,
    #[serde(with = "crate::floats")]
    pub bias: Vec<f32>,
}

/// All four layers, first to last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    pub layers: Vec<LayerWeights>,
}

impl Weights {
    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |l| l.d_in)
    }

    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.d_out)
    }

    /// Checks shapes (input → 256 → 128 → 64 → classes) and values: of
    /// weights read from a checkpoint or a peer, so a failure is a
    /// [`NeuralError::Checkpoint`].
    pub fn validate(&self) -> Result<(), NeuralError> {
        if self.layers.len() != 4 {
            return Err(NeuralError::Checkpoint(format!(
                "{} layers; the model has 4",
                self.layers.len()
            )));
        }
        let mut expected_in = self.input_dim();
        for (i, l) in self.layers.iter().enumerate() {
            if l.d_in != expected_in || (i < 3 && l.d_out != HIDDEN[i]) || l.d_out == 0 {
                return Err(NeuralError::Checkpoint(format!(
                    "layer {i} is {}x{}: wrong shape",
                    l.d_in, l.d_out
                )));
            }
            if l.weight.len() != l.d_in * l.d_out || l.bias.len() != l.d_out {
                return Err(NeuralError::Checkpoint(format!(
                    "layer {i} holds the wrong number of values"
                )));
            }
            if l.weight.iter().chain(&l.bias).any(|x| !x.is_finite()) {
                return Err(NeuralError::Checkpoint(format!(
                    "layer {i} holds a value that is not finite"
                )));
            }
            expected_in = l.d_out;
        }
        Ok(())
    }

    /// A copy with `extra` more outputs (new patterns): existing rows are
    /// kept, new ones start at zero weight and a low bias, so nothing the
    /// model already predicts changes until it learns the new ones.
    pub fn grown(&self, extra: usize) -> Weights {
        let mut grown = self.clone();
        if let Some(last) = grown.layers.last_mut() {
            *last = last.grown(extra);
        }
        grown
    }
}

impl LayerWeights {
    /// This (output) layer with `extra` more outputs: existing ones kept,
    /// new ones at zero weight and a bias far below the others.
    pub fn grown(&self, extra: usize) -> LayerWeights {
        let d_out = self.d_out + extra;
        let mut weight = vec![0f32; self.d_in * d_out];
        for i in 0..self.d_in {
            let row = &self.weight[i * self.d_out..(i + 1) * self.d_out];
            weight[i * d_out..i * d_out + self.d_out].copy_from_slice(row);
        }
        let mut bias = self.bias.clone();
        bias.extend(std::iter::repeat_n(NEW_CLASS_BIAS, extra));
        LayerWeights {
            d_in: self.d_in,
            d_out,
            weight,
            bias,
        }
    }
}

/// Bias of a freshly added output: far below the existing ones' logits.
const NEW_CLASS_BIAS: f32 = -10.0;

/// Input → 256 as rows: `weight[i * 256 + o]` connects feature i to unit o
/// (the layout of [`LayerWeights`], so no copy is needed either way).
#[derive(Debug, Clone)]
pub struct InputLayer {
    pub weights: LayerWeights,
}

impl InputLayer {
    /// Initialised as Burn initialises a `Linear` (uniform in ±1/√fan-in),
    /// drawn from `rng`, so a training run is reproducible.
    pub fn new(dim: usize, rng: &mut SmallRng) -> InputLayer {
        InputLayer {
            weights: initial_layer(dim, HIDDEN[0], rng),
        }
    }

    /// Pre-activations, `rows.len()` × 256, row-major.
    pub fn forward(&self, rows: &[&SparseVec]) -> Vec<f32> {
        let w = &self.weights;
        let mut out = Vec::with_capacity(rows.len() * w.d_out);
        for row in rows {
            let start = out.len();
            out.extend_from_slice(&w.bias);
            let acc = &mut out[start..];
            for &(i, x) in row.iter() {
                let i = i as usize;
                if i >= w.d_in {
                    continue;
                }
                let weights = &w.weight[i * w.d_out..(i + 1) * w.d_out];
                acc.iter_mut().zip(weights).for_each(|(a, w)| *a += x * w);
            }
        }
        out
    }

    /// The gradient of the loss for each row this batch touched, given
    /// the gradient for the pre-activations (`rows.len()` × 256): the
    /// touched feature indices (ascending), their gradients (one 256-row
    /// each, in that order) and the bias gradient.
    pub fn gradients(&self, rows: &[&SparseVec], upstream: &[f32]) -> InputGradients {
        let d = self.weights.d_out;
        let mut touched: Vec<u32> = rows
            .iter()
            .flat_map(|r| r.iter().map(|(i, _)| *i))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        touched.retain(|&i| (i as usize) < self.weights.d_in);
        let mut rows_grad = vec![0f32; touched.len() * d];
        let mut bias = vec![0f32; d];
        for (r, row) in rows.iter().enumerate() {
            let g = &upstream[r * d..(r + 1) * d];
            bias.iter_mut().zip(g).for_each(|(b, g)| *b += g);
            for &(i, x) in row.iter() {
                if let Ok(slot) = touched.binary_search(&i) {
                    let dst = &mut rows_grad[slot * d..(slot + 1) * d];
                    dst.iter_mut().zip(g).for_each(|(a, g)| *a += x * g);
                }
            }
        }
        InputGradients {
            touched,
            rows: rows_grad,
            bias,
        }
    }

    /// A plain gradient step (online learning).
    pub fn sgd_step(&mut self, grads: &InputGradients, learning_rate: f32) {
        let w = &mut self.weights;
        let d = w.d_out;
        for (slot, &i) in grads.touched.iter().enumerate() {
            let g = &grads.rows[slot * d..(slot + 1) * d];
            let i = i as usize;
            w.weight[i * d..(i + 1) * d]
                .iter_mut()
                .zip(g)
                .for_each(|(w, g)| *w -= learning_rate * g);
        }
        w.bias
            .iter_mut()
            .zip(&grads.bias)
            .for_each(|(w, g)| *w -= learning_rate * g);
    }
}

pub struct InputGradients {
    pub touched: Vec<u32>,
    pub rows: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Adam for the input layer, computed only where a batch has gradients.
/// A row a batch does not touch still moves under dense Adam (its first
/// moment decays over the following steps, and each step applies it);
/// here that movement is owed and paid in one go — when the row is next
/// touched, or at [`LazyAdam::settle`] — from the step sizes of the steps
/// it missed. Dense Adam would update all 16.7 million weights per batch
/// for the few thousand that had a gradient.
///
/// One deliberate difference: epsilon is left out of the idle steps (a
/// touched step uses Burn's, 1e-5). A rare feature's √v is around 3e-6,
/// so with epsilon its momentum is damped to a fraction and the telling,
/// rare identifiers learn slowly (the measurements: docs/model.md, "Lazy
/// Adam: the measurements").
pub struct LazyAdam {
    m: Vec<f32>,
    v: Vec<f32>,
    bias_m: Vec<f32>,
    bias_v: Vec<f32>,
    /// Last step whose update each row has received.
    settled: Vec<u32>,
    /// Step size factor of every step so far (index = step).
    factors: Vec<f32>,
    learning_rate: f32,
}

const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;
/// Idle steps whose momentum is still paid: 0.9^200 ≈ 7e-10.
const CATCH_UP_STEPS: usize = 200;

impl LazyAdam {
    pub fn new(layer: &InputLayer, learning_rate: f32) -> LazyAdam {
        let w = &layer.weights;
        LazyAdam {
            m: vec![0.0; w.weight.len()],
            v: vec![0.0; w.weight.len()],
            bias_m: vec![0.0; w.d_out],
            bias_v: vec![0.0; w.d_out],
            settled: vec![0; w.d_in],
            factors: vec![0.0],
            learning_rate,
        }
    }

    fn step_count(&self) -> u32 {
        (self.factors.len() - 1) as u32
    }

    /// Pays row `i` the updates of the steps after its last one up to
    /// `through`, and decays its moments as those steps would have.
    fn catch_up(&mut self, w: &mut LayerWeights, i: usize, through: u32) {
        let last = self.settled[i];
        if last >= through {
            return;
        }
        self.settled[i] = through;
        let idle = (through - last) as usize;
        // Dense Adam's idle step j moves the weight by
        // F_j β1^j m / (β2^(j/2) √v + ε c2_j); without ε that sums to
        // m / √v · Σ F_j (β1/√β2)^j.
        let ratio = BETA_1 / BETA_2.sqrt();
        let mut scale = 0.0f32;
        let mut power = 1.0f32;
        for j in 1..=idle.min(CATCH_UP_STEPS) {
            power *= ratio;
            scale += self.factors[last as usize + j] * power;
        }
        let d = w.d_out;
        let (decay_1, decay_2) = (BETA_1.powi(idle as i32), BETA_2.powi(idle as i32));
        let range = i * d..(i + 1) * d;
        let weights = &mut w.weight[range.clone()];
        let (m, v) = (&mut self.m[range.clone()], &mut self.v[range]);
        // Written branch-free (a select, not a jump) so that the compiler
        // can vectorise it: this loop is a large share of an epoch.
        for ((w, m), v) in weights.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()) {
            let step = if *v > 0.0 { scale * *m / v.sqrt() } else { 0.0 };
            *w -= step;
            *m *= decay_1;
            *v *= decay_2;
        }
    }

    pub fn step(&mut self, layer: &mut InputLayer, grads: &InputGradients) {
        let t = self.step_count() + 1;
        let correction_2 = (1.0 - BETA_2.powi(t as i32)).sqrt();
        let factor = self.learning_rate * correction_2 / (1.0 - BETA_1.powi(t as i32));
        self.factors.push(factor);
        let update = |w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            let lanes = w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g);
            for (((w, m), v), g) in lanes {
                *m = BETA_1 * *m + (1.0 - BETA_1) * g;
                *v = BETA_2 * *v + (1.0 - BETA_2) * g * g;
                *w -= factor * *m / (v.sqrt() + EPSILON * correction_2);
            }
        };
        let w = &mut layer.weights;
        let d = w.d_out;
        for (slot, &i) in grads.touched.iter().enumerate() {
            let i = i as usize;
            self.catch_up(w, i, t - 1);
            self.settled[i] = t;
            let range = i * d..(i + 1) * d;
            update(
                &mut w.weight[range.clone()],
                &mut self.m[range.clone()],
                &mut self.v[range],
                &grads.rows[slot * d..(slot + 1) * d],
            );
        }
        update(&mut w.bias, &mut self.bias_m, &mut self.bias_v, &grads.bias);
    }

    /// Brings every row up to date (before the weights are evaluated or
    /// saved).
    pub fn settle(&mut self, layer: &mut InputLayer) {
        let t = self.step_count();
        for i in 0..layer.weights.d_in {
            self.catch_up(&mut layer.weights, i, t);
        }
    }
}

/// 256 → 128 → 64 → classes, with the ReLU that follows the input layer;
/// Burn trains it.
///
/// Dropout is applied by [`Tail::forward_dropped`] from a generator the
/// caller owns, not by Burn's `Dropout`: that draws its masks (and `Linear`
/// its initial weights) from one generator shared by the whole process, so
/// a training run gave a different model whenever another thread drew from
/// it at the same time — two trainings, or tests running side by side.
#[derive(Module, Debug)]
pub struct Tail {
    l2: Linear,
    l3: Linear,
    out: Linear,
    relu: Relu,
}

fn layer_from(w: &LayerWeights, device: &Device) -> Linear {
    let weight =
        Tensor::<2>::from_data(TensorData::new(w.weight.clone(), [w.d_in, w.d_out]), device);
    let bias = Tensor::<1>::from_data(TensorData::new(w.bias.clone(), [w.d_out]), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    }
}

fn weights_of(layer: &Linear) -> LayerWeights {
    let weight = layer.weight.val();
    let [d_in, d_out] = weight.dims();
    let floats = |data: TensorData| data.try_into_vec_as::<f32>().unwrap_or_default();
    LayerWeights {
        d_in,
        d_out,
        weight: floats(weight.into_data()),
        bias: layer
            .bias
            .as_ref()
            .map(|b| floats(b.val().into_data()))
            .unwrap_or_else(|| vec![0.0; d_out]),
    }
}

/// A `d_in` × `d_out` layer initialised as Burn initialises a `Linear`
/// (weights and bias uniform in ±1/√d_in), drawn from `rng`.
fn initial_layer(d_in: usize, d_out: usize, rng: &mut SmallRng) -> LayerWeights {
    let bound = 1.0 / (d_in as f32).sqrt();
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
    LayerWeights {
        d_in,
        d_out,
        weight: draw(d_in * d_out),
        bias: draw(d_out),
    }
}

/// `x` with each value zeroed with probability `p` and the rest scaled by
/// 1/(1 − p), as Burn's `Dropout` does while training; the mask comes
/// from `rng`.
fn dropped(x: Tensor<2>, p: f64, rng: &mut SmallRng) -> Tensor<2> {
    let [rows, cols] = x.dims();
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..rows * cols)
        .map(|_| if rng.random_bool(p) { 0.0 } else { keep })
        .collect();
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [rows, cols]), &x.device());
    x * mask
}

impl Tail {
    /// A new tail for `classes` outputs, its weights drawn from `rng`.
    pub fn initial(classes: usize, rng: &mut SmallRng, device: &Device) -> Tail {
        let dims = [HIDDEN[0], HIDDEN[1], HIDDEN[2], classes.max(1)];
        let layers: Vec<LayerWeights> = (0..3)
            .map(|i| initial_layer(dims[i], dims[i + 1], rng))
            .collect();
        Tail::from_layers(&layers, device)
    }

    /// The tail with these three layers (checked by the caller).
    pub fn from_layers(layers: &[LayerWeights], device: &Device) -> Tail {
        Tail {
            l2: layer_from(&layers[0], device),
            l3: layer_from(&layers[1], device),
            out: layer_from(&layers[2], device),
            relu: Relu::new(),
        }
    }

    pub fn layer_weights(&self) -> [LayerWeights; 3] {
        [
            weights_of(&self.l2),
            weights_of(&self.l3),
            weights_of(&self.out),
        ]
    }

    /// Logits from the input layer's pre-activations, with `dropout` the
    /// training masks applied after each ReLU.
    fn logits(&self, pre: Tensor<2>, dropout: Option<&mut SmallRng>) -> Tensor<2> {
        self.out.forward(self.last_hidden(pre, dropout))
    }

    /// The last hidden layer's activations (what the output layer reads).
    fn last_hidden(&self, pre: Tensor<2>, mut dropout: Option<&mut SmallRng>) -> Tensor<2> {
        let mut drop = |x: Tensor<2>, layer: usize| match dropout.as_deref_mut() {
            Some(rng) => dropped(x, DROPOUT[layer], rng),
            None => x,
        };
        let x = drop(self.relu.forward(pre), 0);
        let x = drop(self.relu.forward(self.l2.forward(x)), 1);
        drop(self.relu.forward(self.l3.forward(x)), 2)
    }

    /// The last hidden layer's activations (one row of [`HIDDEN`]`[2]` per
    /// input row) and the logits, from the input layer's pre-activations.
    pub fn hidden_and_logits(&self, pre: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let hidden = self.last_hidden(pre, None);
        (hidden.clone(), self.out.forward(hidden))
    }

    /// Logits from the input layer's pre-activations.
    pub fn forward(&self, pre: Tensor<2>) -> Tensor<2> {
        self.logits(pre, None)
    }

    /// Logits as while training: with dropout, its masks drawn from `rng`.
    pub fn forward_dropped(&self, pre: Tensor<2>, rng: &mut SmallRng) -> Tensor<2> {
        self.logits(pre, Some(rng))
    }
}

/// The whole network for prediction: the input rows and the Burn tail.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub input: InputLayer,
    pub tail: Tail,
}

/// `rows` pre-activations as a tensor on `device`.
pub fn pre_tensor(flat: Vec<f32>, rows: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(flat, [rows, HIDDEN[0]]), device)
}

impl Mlp {
    /// The network with these weights, moved in (checked by the caller).
    pub fn from_owned(mut weights: Weights, device: &Device) -> Mlp {
        let tail = Tail::from_layers(&weights.layers[1..], device);
        Mlp {
            input: InputLayer {
                weights: weights.layers.swap_remove(0),
            },
            tail,
        }
    }

    /// The network with these weights (checked by the caller).
    pub fn from_weights(weights: &Weights, device: &Device) -> Mlp {
        Mlp {
            input: InputLayer {
                weights: weights.layers[0].clone(),
            },
            tail: Tail::from_layers(&weights.layers[1..], device),
        }
    }

    /// The network from a trained input layer and a tail (which may live
    /// on another device: it is rebuilt on `device`).
    pub fn from_parts(input: InputLayer, tail: &Tail, device: &Device) -> Mlp {
        Mlp {
            tail: Tail::from_layers(&tail.layer_weights(), device),
            input,
        }
    }

    pub fn weights(&self) -> Weights {
        let [l2, l3, out] = self.tail.layer_weights();
        Weights {
            layers: vec![self.input.weights.clone(), l2, l3, out],
        }
    }

    /// Logits, one row per input row.
    pub fn forward(&self, rows: &[&SparseVec], device: &Device) -> Tensor<2> {
        let pre = self.input.forward(rows);
        self.tail.forward(pre_tensor(pre, rows.len(), device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_is_chosen_once_and_only_if_built() {
        assert_eq!(set_backend(Backend::Ndarray), Ok(()));
        assert_eq!(backend(), Backend::Ndarray);
        // Either not built, or another backend chosen already: refused.
        let refused = set_backend(Backend::Flex).unwrap_err();
        assert!(matches!(refused, NeuralError::Backend(_)), "{refused:?}");
        let refused = refused.to_string();
        assert!(
            refused.contains("flex") || refused.contains("Ndarray"),
            "{refused}"
        );
    }

    /// Dense Adam over one weight, as Burn computes it, but without
    /// epsilon in steps without a gradient (the documented difference).
    fn dense(grads: &[f32], lr: f32) -> f32 {
        let (mut w, mut m, mut v) = (0f32, 0f32, 0f32);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            m = BETA_1 * m + (1.0 - BETA_1) * g;
            v = BETA_2 * v + (1.0 - BETA_2) * g * g;
            let c2 = (1.0 - BETA_2.powi(t)).sqrt();
            let epsilon = if *g != 0.0 { EPSILON * c2 } else { 0.0 };
            if v > 0.0 {
                w -= lr * c2 / (1.0 - BETA_1.powi(t)) * m / (v.sqrt() + epsilon);
            }
        }
        w
    }

    #[test]
    fn lazy_adam_pays_idle_rows_the_momentum_dense_adam_would_apply() {
        // Gradients on a one-feature layer at a few steps, none between;
        // small and large gradients (√v below and above epsilon).
        for scale in [1e-7f32, 1e-5, 1e-3, 1e-1] {
            let touched_at = [1usize, 2, 9, 40, 41, 300];
            let steps = 400;
            let mut layer = InputLayer {
                weights: LayerWeights {
                    d_in: 2,
                    d_out: 1,
                    weight: vec![0.0; 2],
                    bias: vec![0.0],
                },
            };
            let mut adam = LazyAdam::new(&layer, 1e-3);
            let mut grads = vec![0f32; steps];
            for t in 1..=steps {
                let g = if touched_at.contains(&t) {
                    scale * (t as f32 % 3.0 - 0.5)
                } else {
                    0.0
                };
                grads[t - 1] = g;
                let input = InputGradients {
                    touched: if g != 0.0 { vec![0] } else { vec![1] },
                    rows: vec![g],
                    bias: vec![0.0],
                };
                adam.step(&mut layer, &input);
            }
            adam.settle(&mut layer);
            let want = dense(&grads, 1e-3);
            let got = layer.weights.weight[0];
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1e-9),
                "gradient scale {scale}: lazy {got} dense {want}"
            );
        }
    }
}
