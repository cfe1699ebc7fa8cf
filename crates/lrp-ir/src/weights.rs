//! The weights sidecar: named f32 tensors in a `.safetensors` file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::IrError;

/// Named f32 tensors, kept in name order. Each tensor is shared (a clone of the set or a
/// [`Weights::shared`] handle does not copy it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, Arc<ArrayD<f32>>>,
}

impl Weights {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tensor called `key`.
    pub fn get(&self, key: &str) -> Option<&ArrayD<f32>> {
        self.tensors.get(key).map(|a| &**a)
    }

    /// A handle on the tensor called `key` that keeps it alive (no copy).
    pub fn shared(&self, key: &str) -> Option<Arc<ArrayD<f32>>> {
        self.tensors.get(key).cloned()
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, key: impl Into<String>, value: ArrayD<f32>) {
        self.tensors.insert(key.into(), Arc::new(value));
    }

    /// Removes a tensor, returning it (a copy only if it is still shared).
    pub fn remove(&mut self, key: &str) -> Option<ArrayD<f32>> {
        self.tensors
            .remove(key)
            .map(|a| Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone()))
    }

    /// All tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ArrayD<f32>)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Reads a `.safetensors` file. F32 tensors are taken as they are; F64 and F16 are converted
    /// to f32; other dtypes are an error naming the tensor. The file is memory-mapped, so its
    /// bytes are read from the page cache without a second copy in memory; it must not change
    /// while it is read.
    pub fn load(path: &Path) -> Result<Self, IrError> {
        let io = |source| IrError::Io {
            path: path.to_owned(),
            action: "cannot read the weights file",
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is only read, here, and dropped before returning; the file must not
        // be truncated meanwhile (documented above).
        let decoded = match unsafe { memmap2::Mmap::map(&file) } {
            Ok(map) => Self::from_bytes(&map),
            // Not mappable (a pipe, say): read it whole.
            Err(_) => Self::from_bytes(&std::fs::read(path).map_err(io)?),
        };
        decoded.map_err(|message| IrError::Weights {
            path: path.to_owned(),
            message,
        })
    }

    /// Decodes safetensors bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a valid safetensors file: {e}"))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                other => {
                    return Err(format!(
                        "tensor '{name}' has dtype {other:?}; only F32, F64 and F16 are read"
                    ));
                }
            };
            let arr = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
                .map_err(|e| format!("tensor '{name}': {e}"))?;
            tensors.insert(name.to_owned(), Arc::new(arr));
        }
        Ok(Weights { tensors })
    }

    /// Encodes as safetensors bytes (f32, little-endian, name order).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let raw: Vec<(&str, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(k, v)| {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (k.as_str(), bytes, v.shape().to_vec())
            })
            .collect();
        let views = raw
            .iter()
            .map(|(k, b, s)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (*k, v))
                    .map_err(|e| format!("tensor '{k}': {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize(views, None).map_err(|e| e.to_string())
    }

    /// Writes a `.safetensors` file atomically.
    pub fn save(&self, path: &Path) -> Result<(), IrError> {
        let bytes = self.to_bytes().map_err(|message| IrError::Weights {
            path: path.to_owned(),
            message,
        })?;
        crate::fsutil::write_atomic(path, &bytes).map_err(|source| IrError::Io {
            path: path.to_owned(),
            action: "cannot write",
            source,
        })
    }
}

/// IEEE 754 half → single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: renormalise.
            let shift = f.leading_zeros() - 21;
            let f = (f << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (f << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn round_trip() {
        let mut w = Weights::new();
        w.insert(
            "a",
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1., 2., 3., 4., 5., -6.]).unwrap(),
        );
        w.insert("b", ArrayD::from_shape_vec(IxDyn(&[1]), vec![0.5]).unwrap());
        let back = Weights::from_bytes(&w.to_bytes().unwrap()).unwrap();
        assert_eq!(back, w);
    }
}
