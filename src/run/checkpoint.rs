//! Saving and loading models as safetensors, with PyTorch's names and layouts
//! (`conv1.weight (8, 1, 3, 3)`, `fc1.weight (128, 784)`, ...), written atomically.
//!
//! The model spec (TOML) is stored in the metadata under `convnet.spec`, so a model file
//! rebuilds its network on its own. Every file carries the SHA-256 of its tensor data
//! (`convnet.sha256`), checked when it is read, and is written with its metadata sorted, so
//! the same weights always give the same bytes.

use crate::engine::Network;
use crate::fsutil::write_atomic;
use crate::nn::Buffer;
use crate::spec::ModelSpec;
use crate::Error;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SPEC_KEY: &str = "convnet.spec";

/// One named tensor to write.
pub struct NamedTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: &'a [f32],
    /// An I64 scalar instead of f32 values (PyTorch's `num_batches_tracked`).
    pub int: Option<i64>,
}

/// The metadata key of the tensor data's checksum.
pub const CHECKSUM_KEY: &str = "convnet.sha256";

/// The header length and the tensor data of safetensors `bytes` (already checked for
/// structure).
fn data_section(bytes: &[u8]) -> &[u8] {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    &bytes[8 + n..]
}

/// Serialises tensors (f32, little-endian) and string metadata to safetensors bytes, with
/// the checksum of the tensor data added to the metadata and every key in sorted order.
pub fn to_safetensors(tensors: &[NamedTensor], mut metadata: HashMap<String, String>) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| match t.int {
            Some(i) => i.to_le_bytes().to_vec(),
            None => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            (
                t.name.clone(),
                TensorView::new(
                    if t.int.is_some() {
                        Dtype::I64
                    } else {
                        Dtype::F32
                    },
                    t.shape.clone(),
                    b,
                )
                .expect("shape matches data"),
            )
        })
        .collect();
    metadata.remove(CHECKSUM_KEY);
    let unsorted = safetensors::tensor::serialize(views, &Some(metadata))
        .expect("f32 tensors always serialise");
    // The crate writes the metadata in hash-map order; write the header again from sorted
    // maps (serde_json's objects are ordered by key), with the checksum, data unchanged.
    let data = data_section(&unsorted);
    let n = u64::from_le_bytes(unsorted[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value =
        serde_json::from_slice(&unsorted[8..8 + n]).expect("the crate writes JSON");
    header["__metadata__"][CHECKSUM_KEY] = crate::data::fetch::hex(&Sha256::digest(data)).into();
    let mut json = serde_json::to_vec(&header).expect("JSON serialises");
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

/// The network's parameters and buffers as named tensors, in PyTorch names and layouts.
pub fn model_tensors(net: &Network) -> Vec<NamedTensor<'_>> {
    let mut out: Vec<NamedTensor> = net
        .named_params()
        .into_iter()
        .map(|(name, p)| NamedTensor {
            name,
            shape: p.shape.clone(),
            values: &p.value,
            int: None,
        })
        .collect();
    for l in net.layers() {
        for b in l.buffers() {
            let name = format!("{}.{}", l.name(), b.name());
            out.push(match b {
                Buffer::F32(_, v) => NamedTensor {
                    name,
                    shape: vec![v.len()],
                    values: v,
                    int: None,
                },
                Buffer::I64(_, i) => NamedTensor {
                    name,
                    shape: vec![],
                    values: &[],
                    int: Some(i),
                },
            });
        }
    }
    out
}

/// Saves the model (weights + spec in the metadata, plus `extra` metadata) atomically.
pub fn save_model(path: &Path, net: &Network, extra: &[(&str, String)]) -> Result<(), Error> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(SPEC_KEY.to_string(), net.spec.to_toml());
    for (k, v) in extra {
        meta.insert(k.to_string(), v.clone());
    }
    write_atomic(path, &to_safetensors(&model_tensors(net), meta))
}

/// A model file given either directly or as the run directory holding `model.safetensors`.
pub fn resolve_model_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// A safetensors file read into memory, checked for structure.
pub struct TensorFile {
    pub path: PathBuf,
    bytes: Vec<u8>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<TensorFile, Error> {
        let bytes = crate::fsutil::read_capped(path, 4 << 30).map_err(|e| match e {
            Error::Data { path, msg } => Error::Model { path, msg },
            e => e,
        })?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            Error::model(
                path,
                format!("is not a valid safetensors file ({e}); truncated or corrupt?"),
            )
        })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::model(
                path,
                format!("is not a valid safetensors file ({e}); truncated or corrupt?"),
            )
        })?;
        // Files written elsewhere (PyTorch) carry no checksum; convnet's always do.
        if let Some(want) = metadata.get(CHECKSUM_KEY) {
            let got = crate::data::fetch::hex(&Sha256::digest(data_section(&bytes)));
            if &got != want {
                return Err(Error::model(
                    path,
                    format!(
                        "its tensor data does not match its checksum (sha256 {got}, expected {want}): \
                         the file is corrupt"
                    ),
                ));
            }
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            bytes,
            metadata,
        })
    }

    /// The tensor `name` as f32 values, checked against the expected shape.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        let st = SafeTensors::deserialize(&self.bytes).expect("checked in read");
        let view = st.tensor(name).map_err(|_| {
            Error::model(
                &self.path,
                format!("has no tensor `{name}` (expected shape {shape:?})"),
            )
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(Error::model(
                &self.path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        if view.shape() != shape {
            return Err(Error::model(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, the architecture expects {shape:?}",
                    view.shape()
                ),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::model(
                &self.path,
                format!(
                    "tensor `{name}` holds {} at index {i}: the weights are unusable",
                    values[i]
                ),
            ));
        }
        Ok(values)
    }

    /// The names of every tensor.
    #[cfg(test)]
    pub fn names(&self) -> Vec<String> {
        let st = SafeTensors::deserialize(&self.bytes).expect("checked in read");
        st.names().into_iter().cloned().collect()
    }

    /// The model spec stored in the metadata.
    pub fn spec(&self) -> Result<ModelSpec, Error> {
        let text = self.metadata.get(SPEC_KEY).ok_or_else(|| {
            Error::model(
                &self.path,
                format!("has no `{SPEC_KEY}` metadata: it was not saved by convnet"),
            )
        })?;
        ModelSpec::from_toml(
            text,
            &format!("{} (metadata {SPEC_KEY})", self.path.display()),
        )
    }

    /// Class names saved with the model, else `0`, `1`, ... for `k` classes.
    pub fn class_names(&self, k: usize) -> Vec<String> {
        self.metadata
            .get("convnet.classes")
            .and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
            .filter(|v| v.len() == k)
            .unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect())
    }

    /// The data set the model was trained on, when it says.
    pub fn dataset(&self) -> Option<crate::data::DatasetKind> {
        self.metadata
            .get("convnet.dataset")
            .and_then(|d| d.parse().ok())
    }

    /// An I64 scalar tensor.
    pub fn scalar_i64(&self, name: &str) -> Result<i64, Error> {
        let st = SafeTensors::deserialize(&self.bytes).expect("checked in read");
        let view = st.tensor(name).map_err(|_| {
            Error::model(
                &self.path,
                format!("has no tensor `{name}` (expected an I64 scalar)"),
            )
        })?;
        match (view.dtype(), view.data()) {
            (Dtype::I64, d) if d.len() == 8 => {
                Ok(i64::from_le_bytes(d.try_into().expect("8 bytes")))
            }
            (dt, _) => Err(Error::model(
                &self.path,
                format!(
                    "tensor `{name}` is {dt:?} of shape {:?}, expected an I64 scalar",
                    view.shape()
                ),
            )),
        }
    }

    /// Copies this file's weights (and buffers) into `net`, checking every name and shape.
    pub fn load_weights(&self, net: &mut Network) -> Result<(), Error> {
        for i in 0..net.len() {
            let lname = net.layer(i).name().to_string();
            let wanted: Vec<(String, Option<usize>)> = net
                .layer(i)
                .buffers()
                .iter()
                .map(|b| match b {
                    Buffer::F32(n, v) => (n.to_string(), Some(v.len())),
                    Buffer::I64(n, _) => (n.to_string(), None),
                })
                .collect();
            for (bname, len) in wanted {
                let full = format!("{lname}.{bname}");
                match len {
                    Some(n) => {
                        let v = self.tensor(&full, &[n])?;
                        net.layer_mut(i).set_buffer(&bname, &v, 0);
                    }
                    None => {
                        let c = self.scalar_i64(&full)?;
                        net.layer_mut(i).set_buffer(&bname, &[], c);
                    }
                }
            }
            for p in net.layer_mut(i).params_mut() {
                p.value = self.tensor(&format!("{lname}.{}", p.name), &p.shape)?;
            }
        }
        Ok(())
    }
}

/// Rebuilds a network from a model file (or run directory) alone.
pub fn load_model(path: &Path) -> Result<(Network, TensorFile), Error> {
    let path = resolve_model_path(path);
    let file = TensorFile::read(&path)?;
    let mut net = Network::build(&file.spec()?)?;
    file.load_weights(&mut net)?;
    Ok((net, file))
}
