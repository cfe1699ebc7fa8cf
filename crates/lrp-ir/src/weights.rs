//! The weights sidecar: named f32 tensors in a `.safetensors` file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::IrError;

/// Named f32 tensors, kept in name order. Each tensor is shared (a clone of the set or a
/// [`Weights::shared`] handle does not copy it). Tensors read by [`Weights::load`] stay in the
/// mapped file where they can: the values are read from the page cache, never copied.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    tensors: BTreeMap<String, SharedTensor>,
}

/// A handle on one tensor of a [`Weights`] set that keeps its values alive (no copy).
#[derive(Clone)]
pub struct SharedTensor(Stored);

#[derive(Clone)]
enum Stored {
    /// Values in memory of their own.
    Owned(Arc<ArrayD<f32>>),
    /// Little-endian f32 values at byte `offset` of a mapped file, 4-byte aligned (checked
    /// when the file was read), in standard layout.
    Mapped {
        file: Arc<memmap2::MmapMut>,
        offset: usize,
        shape: Vec<usize>,
    },
}

impl SharedTensor {
    /// The values, in standard layout.
    pub fn view(&self) -> ArrayViewD<'_, f32> {
        match &self.0 {
            Stored::Owned(a) => a.view(),
            Stored::Mapped {
                file,
                offset,
                shape,
            } => {
                let len = shape.iter().product::<usize>() * 4;
                let values: &[f32] = bytemuck::try_cast_slice(&file[*offset..*offset + len])
                    .expect("alignment and length checked when the file was read");
                ArrayViewD::from_shape(IxDyn(shape), values).expect("length checked when read")
            }
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match &self.0 {
            Stored::Owned(a) => a.shape(),
            Stored::Mapped { shape, .. } => shape,
        }
    }

    /// Whether the values are read in place from a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Stored::Mapped { .. })
    }
}

impl std::fmt::Debug for SharedTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTensor")
            .field("shape", &self.shape())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl PartialEq for Weights {
    /// The same names with the same shapes and values.
    fn eq(&self, other: &Self) -> bool {
        self.tensors.len() == other.tensors.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|((ka, a), (kb, b))| ka == kb && a == b)
    }
}

impl Weights {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tensor called `key`.
    pub fn get(&self, key: &str) -> Option<ArrayViewD<'_, f32>> {
        self.tensors.get(key).map(SharedTensor::view)
    }

    /// The shape of the tensor called `key`.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(SharedTensor::shape)
    }

    /// A handle on the tensor called `key` that keeps it alive (no copy).
    pub fn shared(&self, key: &str) -> Option<SharedTensor> {
        self.tensors.get(key).cloned()
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, key: impl Into<String>, value: ArrayD<f32>) {
        self.tensors
            .insert(key.into(), SharedTensor(Stored::Owned(Arc::new(value))));
    }

    /// Removes a tensor, returning it (a copy only if it is still shared or mapped).
    pub fn remove(&mut self, key: &str) -> Option<ArrayD<f32>> {
        self.tensors.remove(key).map(|t| match t.0 {
            Stored::Owned(a) => Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone()),
            mapped => SharedTensor(mapped).view().to_owned(),
        })
    }

    /// All tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ArrayViewD<'_, f32>)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v.view()))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Reads a `.safetensors` file. F32 tensors are read in place from the memory-mapped file
    /// (from the page cache, without a copy) where they are 4-byte aligned, as the files that
    /// lrp-graph writes are; F64 and F16 are converted to f32; other dtypes are an error naming
    /// the tensor. The file must not be changed in place or truncated while the weights are
    /// alive (lrp-graph replaces files by renaming a new one over them, which is safe).
    pub fn load(path: &Path) -> Result<Self, IrError> {
        let io = |source| IrError::Io {
            path: path.to_owned(),
            action: "cannot read the weights file",
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: a private (copy-on-write) map, which nothing here writes; the file must not
        // be truncated or changed in place while the weights are alive (documented above).
        let decoded = match unsafe { memmap2::MmapOptions::new().map_copy(&file) } {
            Ok(map) => {
                let map = Arc::new(map);
                Self::read(&map, Some(&map))
            }
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
        Self::read(bytes, None)
    }

    /// Decodes `bytes`; where they are `map`'s, aligned little-endian f32 tensors stay in it
    /// and the rest are converted into arrays of their own.
    fn read(bytes: &[u8], map: Option<&Arc<memmap2::MmapMut>>) -> Result<Self, String> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a valid safetensors file: {e}"))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let data = view.data();
            let in_place = cfg!(target_endian = "little")
                && view.dtype() == Dtype::F32
                && bytemuck::try_cast_slice::<u8, f32>(data).is_ok()
                && data.len() == view.shape().iter().product::<usize>() * 4;
            let stored = match map {
                Some(map) if in_place => Stored::Mapped {
                    file: Arc::clone(map),
                    offset: data.as_ptr() as usize - map.as_ptr() as usize,
                    shape: view.shape().to_vec(),
                },
                _ => Stored::Owned(Arc::new(decode(name, &view)?)),
            };
            tensors.insert(name.to_owned(), SharedTensor(stored));
        }
        Ok(Weights { tensors })
    }

    /// Encodes as safetensors bytes (f32, little-endian, name order).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let raw: Vec<(&str, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(k, v)| {
                let bytes = v.view().iter().flat_map(|x| x.to_le_bytes()).collect();
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

/// One safetensors tensor as f32 values of its own (F32, F64 or F16).
fn decode(name: &str, view: &TensorView<'_>) -> Result<ArrayD<f32>, String> {
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
    ArrayD::from_shape_vec(IxDyn(view.shape()), values).map_err(|e| format!("tensor '{name}': {e}"))
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

    /// A safetensors file by hand: `header` (JSON, padded with spaces to `header_len` bytes),
    /// then `data`.
    fn raw_file(header: &str, header_len: usize, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header_len as u64).to_le_bytes().to_vec();
        bytes.extend(format!("{header:<header_len$}").bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn load_reads_aligned_f32_in_place_and_converts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Weights::new();
        w.insert(
            "conv",
            ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 2]), vec![1., -2., 3., 0.25]).unwrap(),
        );
        w.insert(
            "bias",
            ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.5, 0., -1.]).unwrap(),
        );
        let path = dir.path().join("w.safetensors");
        w.save(&path).unwrap();
        let back = Weights::load(&path).unwrap();
        assert_eq!(back, w);
        assert!(back.shared("conv").unwrap().is_mapped());
        assert!(back.shared("bias").unwrap().is_mapped());
        assert_eq!(back.shape("conv"), Some(&[2, 1, 1, 2][..]));
        // Shared handles and removed tensors outlive the set and its map.
        let conv = back.shared("conv").unwrap();
        let mut rest = back.clone();
        drop(back);
        assert_eq!(rest.remove("bias").unwrap(), w.get("bias").unwrap());
        drop(rest);
        assert_eq!(conv.view(), w.get("conv").unwrap());

        // F32 values at an offset that is not a multiple of 4, and F16 values: decoded copies.
        let header = r#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"odd":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let mut data = vec![0x00, 0x3c, 0x00, 0xc0];
        data.extend(2.5f32.to_le_bytes());
        let len = header.len() + (4 - (8 + header.len()) % 4) % 4 + 1;
        let path = dir.path().join("odd.safetensors");
        std::fs::write(&path, raw_file(header, len, &data)).unwrap();
        let odd = Weights::load(&path).unwrap();
        assert!(!odd.shared("odd").unwrap().is_mapped());
        assert!(!odd.shared("h").unwrap().is_mapped());
        assert_eq!(odd.get("odd").unwrap().as_slice().unwrap(), &[2.5]);
        assert_eq!(odd.get("h").unwrap().as_slice().unwrap(), &[1.0, -2.0]);
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
