//! A trained model, and what it says about an image.

use crate::data::dataset::PixelLut;
use crate::data::preprocess::{preprocess_file_as, Preprocessed, Style};
use crate::data::DatasetKind;
use crate::engine::Network;
use crate::nn::loss::softmax;
use crate::nn::Mode;
use crate::run::checkpoint::{load_model, save_model, TensorFile};
use crate::spec::ModelSpec;
use crate::Error;
use std::path::{Path, PathBuf};

/// A trained network with what it needs to classify images: its class names and how the
/// images it learned from were prepared.
///
/// ```no_run
/// let mut model = convnet::Model::load("runs/my-run")?; // or ".../model.safetensors"
/// for file in ["a.png", "b.jpg"] {
///     let p = model.classify(file)?;
///     println!("{file}: {} {:.1}%", p.class, 100.0 * p.probability);
/// }
/// # Ok::<(), convnet::Error>(())
/// ```
pub struct Model {
    net: Network,
    classes: Vec<String>,
    dataset: Option<DatasetKind>,
    path: Option<PathBuf>,
}

/// One class and its probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// The class index.
    pub index: usize,
    /// Its name (`7`, `Sneaker`).
    pub class: String,
    /// Its probability.
    pub probability: f32,
}

/// What a model says about one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The most probable class's index.
    pub label: usize,
    /// Its name.
    pub class: String,
    /// Its probability.
    pub probability: f32,
    /// Every class's probability, by index.
    pub probabilities: Vec<f32>,
    classes: Vec<String>,
}

impl Prediction {
    fn new(probabilities: Vec<f32>, classes: &[String]) -> Prediction {
        let label = crate::nn::loss::argmax(&probabilities);
        Prediction {
            label,
            class: classes[label].clone(),
            probability: probabilities[label],
            probabilities,
            classes: classes.to_vec(),
        }
    }

    /// The `k` most probable classes, most probable first.
    pub fn top(&self, k: usize) -> Vec<Ranked> {
        let mut order: Vec<usize> = (0..self.probabilities.len()).collect();
        order.sort_by(|&a, &b| self.probabilities[b].total_cmp(&self.probabilities[a]));
        order
            .into_iter()
            .take(k)
            .map(|index| Ranked {
                index,
                class: self.classes[index].clone(),
                probability: self.probabilities[index],
            })
            .collect()
    }
}

impl Model {
    /// Loads a model file (`model.safetensors`, `best.safetensors`) or the run folder
    /// holding `model.safetensors`; the network is rebuilt from the file alone.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, Error> {
        let (net, file) = load_model(path.as_ref())?;
        Ok(Model::from_parts(net, &file))
    }

    pub(crate) fn from_parts(net: Network, file: &TensorFile) -> Model {
        Model {
            classes: file.class_names(net.classes()),
            dataset: file.dataset(),
            path: Some(file.path.clone()),
            net,
        }
    }

    /// A model from a trained network; `dataset` names its classes and how its images
    /// were prepared.
    pub fn from_network(net: Network, dataset: Option<DatasetKind>) -> Model {
        let classes = match dataset {
            Some(d) if d.class_names().len() == net.classes() => d.class_names(),
            _ => (0..net.classes()).map(|i| i.to_string()).collect(),
        };
        Model {
            net,
            classes,
            dataset,
            path: None,
        }
    }

    /// Saves the weights and the spec (safetensors, PyTorch's names), atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let classes = serde_json::to_string(&self.classes).expect("strings serialise");
        let mut meta = vec![("convnet.classes", classes)];
        if let Some(d) = self.dataset {
            meta.push(("convnet.dataset", d.to_string()));
        }
        save_model(path.as_ref(), &self.net, &meta)
    }

    /// The file the model was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The class names, by index.
    pub fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// The data set the model was trained on, when its file says.
    pub fn dataset(&self) -> Option<DatasetKind> {
        self.dataset
    }

    /// The architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.net.spec
    }

    /// The network itself.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The network, to run it directly.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    /// How images are prepared for this model: as MNIST digits, or as Fashion-MNIST
    /// products.
    pub fn style(&self) -> Style {
        self.dataset.map(Style::of).unwrap_or(Style::Digit)
    }

    /// Reads an image file (PNG or JPEG, any size and colour type), prepares it the way
    /// the training images were made (see [`crate::data::preprocess`]) and classifies it.
    pub fn classify(&mut self, image_file: impl AsRef<Path>) -> Result<Prediction, Error> {
        let p = self.prepare(image_file.as_ref())?;
        self.classify_pixels(&p.pixels)
    }

    /// Prepares an image file the way the training images were made, without classifying
    /// it: the pixels the network would see.
    pub fn prepare(&self, image_file: &Path) -> Result<Preprocessed, Error> {
        let shape = self.net.input_shape();
        if shape[0] != 1 || shape[1] != shape[2] {
            return Err(Error::Config(format!(
                "images can only be prepared for a model with a 1xNxN input; this one takes {}",
                crate::tensor::ShapeDisplay(shape)
            )));
        }
        preprocess_file_as(image_file, shape[1], self.style())
    }

    /// Classifies one image already prepared: C*H*W grey levels, 0 the background (as in
    /// the IDX files).
    pub fn classify_pixels(&mut self, pixels: &[u8]) -> Result<Prediction, Error> {
        Ok(self.predict(&[pixels])?.remove(0))
    }

    /// Classifies a batch of prepared images at once.
    pub fn predict(&mut self, images: &[&[u8]]) -> Result<Vec<Prediction>, Error> {
        let len: usize = self.net.input_shape().iter().product();
        if let Some((i, bad)) = images.iter().enumerate().find(|(_, p)| p.len() != len) {
            return Err(Error::Config(format!(
                "image {i} has {} pixels; the model takes {} ({})",
                bad.len(),
                len,
                crate::tensor::ShapeDisplay(self.net.input_shape())
            )));
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let lut = PixelLut::new(self.net.spec.normalize);
        let input = self.net.input_mut(images.len());
        for (dst, src) in input.chunks_mut(len).zip(images) {
            for (d, &v) in dst.iter_mut().zip(src.iter()) {
                *d = lut.0[v as usize];
            }
        }
        let out = self.net.forward(Mode::Eval);
        (0..images.len())
            .map(|i| {
                let probs = softmax(out.sample(i));
                if probs.iter().any(|p| !p.is_finite()) {
                    return Err(Error::Model {
                        path: self.path.clone().unwrap_or_default(),
                        msg: "gives no finite probabilities (its weights hold NaN or infinite values)"
                            .into(),
                    });
                }
                Ok(Prediction::new(probs, &self.classes))
            })
            .collect()
    }
}
