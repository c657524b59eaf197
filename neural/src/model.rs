//! The network of SPEC.md: input → 256 → 128 → 64 → one output per
//! pattern, ReLU between layers, dropout 0.2/0.2/0.1 while training.
//! Weights move in and out as plain `f32` vectors ([`Weights`]), which is
//! what checkpoints store, peers exchange and merges average.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, Relu};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub const HIDDEN: [usize; 3] = [256, 128, 64];
const DROPOUT: [f64; 3] = [0.2, 0.2, 0.1];

/// The CPU backend the model runs on; kept in one place so it can move
/// (burn marks ndarray deprecated in favour of flex).
/// The issue asks for the ndarray backend, which burn 0.22 marks deprecated.
#[allow(deprecated)]
pub fn cpu() -> Device {
    Device::ndarray()
}

#[derive(Module, Debug)]
pub struct Mlp {
    l1: Linear,
    d1: Dropout,
    l2: Linear,
    d2: Dropout,
    l3: Linear,
    d3: Dropout,
    out: Linear,
    relu: Relu,
}

/// One dense layer: `weight[i * d_out + o]` connects input i to output o.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerWeights {
    pub d_in: usize,
    pub d_out: usize,
    pub weight: Vec<f32>,
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

    /// Checks shapes (input → 256 → 128 → 64 → classes) and values.
    pub fn validate(&self) -> Result<(), String> {
        if self.layers.len() != 4 {
            return Err(format!("{} layers; the model has 4", self.layers.len()));
        }
        let mut expected_in = self.input_dim();
        for (i, l) in self.layers.iter().enumerate() {
            if l.d_in != expected_in || (i < 3 && l.d_out != HIDDEN[i]) || l.d_out == 0 {
                return Err(format!("layer {i} is {}x{}: wrong shape", l.d_in, l.d_out));
            }
            if l.weight.len() != l.d_in * l.d_out || l.bias.len() != l.d_out {
                return Err(format!("layer {i} holds the wrong number of values"));
            }
            if l.weight.iter().chain(&l.bias).any(|x| !x.is_finite()) {
                return Err(format!("layer {i} holds a value that is not finite"));
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
            let d_out = last.d_out + extra;
            let mut weight = vec![0f32; last.d_in * d_out];
            for i in 0..last.d_in {
                let row = &last.weight[i * last.d_out..(i + 1) * last.d_out];
                weight[i * d_out..i * d_out + last.d_out].copy_from_slice(row);
            }
            last.weight = weight;
            last.bias.extend(std::iter::repeat_n(NEW_CLASS_BIAS, extra));
            last.d_out = d_out;
        }
        grown
    }
}

/// Bias of a freshly added output: far below the existing ones' logits.
const NEW_CLASS_BIAS: f32 = -10.0;

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
    let floats = |data: TensorData| data.try_to_vec::<f32>().unwrap_or_default();
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

impl Mlp {
    /// A freshly initialised network.
    pub fn new(input: usize, classes: usize, device: &Device) -> Mlp {
        let dims = [input, HIDDEN[0], HIDDEN[1], HIDDEN[2], classes.max(1)];
        let linear = |i: usize| LinearConfig::new(dims[i], dims[i + 1]).init(device);
        let dropout = |i: usize| DropoutConfig::new(DROPOUT[i]).init();
        Mlp {
            l1: linear(0),
            d1: dropout(0),
            l2: linear(1),
            d2: dropout(1),
            l3: linear(2),
            d3: dropout(2),
            out: linear(3),
            relu: Relu::new(),
        }
    }

    /// The network with these weights (checked by the caller).
    pub fn from_weights(weights: &Weights, device: &Device) -> Mlp {
        let mut model = Mlp::new(weights.input_dim(), weights.classes(), device);
        let layers = &weights.layers;
        model.l1 = layer_from(&layers[0], device);
        model.l2 = layer_from(&layers[1], device);
        model.l3 = layer_from(&layers[2], device);
        model.out = layer_from(&layers[3], device);
        model
    }

    pub fn weights(&self) -> Weights {
        Weights {
            layers: [&self.l1, &self.l2, &self.l3, &self.out]
                .into_iter()
                .map(weights_of)
                .collect(),
        }
    }

    /// Logits, one row per input row.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.d1.forward(self.relu.forward(self.l1.forward(x)));
        let x = self.d2.forward(self.relu.forward(self.l2.forward(x)));
        let x = self.d3.forward(self.relu.forward(self.l3.forward(x)));
        self.out.forward(x)
    }
}
