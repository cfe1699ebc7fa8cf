//! `.npy` files: a reader that checks everything it reads and says what is wrong, and a writer of
//! standard float32 little-endian C-order arrays.
//!
//! The header is parsed here rather than by `ndarray-npy` so that every failure (not a `.npy`
//! file, truncated, wrong dtype) gets a precise message.

use std::io::{Read, Write};
use std::path::Path;

use lrp_ir::{InputDef, Layout};
use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::error::{IoError, Result, one_line};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file of float32 or float64 values (converted to float32) of any shape.
///
/// Both byte orders and both C and Fortran order are read; the result is always in standard
/// (C) layout. Values are not checked: use [`read_npy_input`] for model inputs.
pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    Ok(match read_raw(path)? {
        Raw::F32(a) => a,
        Raw::F64(a) => a.mapv(|v| v as f32),
    })
}

/// Reads a model input from a `.npy` file of float32 or float64 values.
///
/// The array must have the shape `[N, ...input.shape]` with `N ≥ 1` (the batch axis first, the
/// rest in the model's own layout) and only finite values (float64 values must also fit into
/// float32). Fortran-order arrays are converted; the result is in standard (C) layout.
pub fn read_npy_input(path: &Path, input: &InputDef) -> Result<ArrayD<f32>> {
    let raw = read_raw(path)?;
    let shape = raw.shape().to_vec();
    check_shape(path, &shape, input)?;
    match raw {
        Raw::F32(a) => {
            if let Some(i) = a.iter().position(|v| !v.is_finite()) {
                return Err(IoError::NonFinite {
                    path: path.to_path_buf(),
                    index: unravel(i, &shape),
                    value: format!("{}", a.as_slice().expect("standard layout")[i]),
                });
            }
            Ok(a)
        }
        Raw::F64(a) => {
            if let Some(i) = a.iter().position(|&v| !(v as f32).is_finite()) {
                let v = a.as_slice().expect("standard layout")[i];
                let index = unravel(i, &shape);
                let path = path.to_path_buf();
                return Err(if v.is_finite() {
                    IoError::OutOfRange {
                        path,
                        index,
                        value: v,
                    }
                } else {
                    IoError::NonFinite {
                        path,
                        index,
                        value: format!("{v}"),
                    }
                });
            }
            Ok(a.mapv(|v| v as f32))
        }
    }
}

/// Checks `shape` against `[N, ...input.shape]`, N ≥ 1.
fn check_shape(path: &Path, shape: &[usize], input: &InputDef) -> Result<()> {
    let sample = &input.shape;
    if shape.len() == sample.len() + 1 && shape[1..] == sample[..] && shape[0] >= 1 {
        return Ok(());
    }
    let hint = if shape.len() == sample.len() + 1 && shape[1..] == sample[..] {
        "; the batch axis (the first) is empty".to_string()
    } else if shape == &sample[..] {
        "; add a batch axis of length 1 in front".to_string()
    } else if shape.len() == 4 && sample.len() == 3 {
        let s = &shape[1..];
        match input.layout {
            Layout::NCHW if [s[2], s[0], s[1]] == sample[..] => {
                "; the array looks like NHWC: transpose it to NCHW (axes 0, 3, 1, 2)".to_string()
            }
            Layout::NHWC if [s[1], s[2], s[0]] == sample[..] => {
                "; the array looks like NCHW: transpose it to NHWC (axes 0, 2, 3, 1)".to_string()
            }
            _ => String::new(),
        }
    } else {
        String::new()
    };
    Err(IoError::Shape {
        path: path.to_path_buf(),
        shape: shape.to_vec(),
        expected: sample.clone(),
        layout: input.layout,
        hint,
    })
}

/// The multi-index of the `flat`-th element in C order.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            index[i] = flat % d;
            flat /= d;
        }
    }
    index
}

/// An array as stored, in standard layout.
enum Raw {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
}

impl Raw {
    fn shape(&self) -> &[usize] {
        match self {
            Raw::F32(a) => a.shape(),
            Raw::F64(a) => a.shape(),
        }
    }
}

/// Maps an I/O error on opening or reading `path` to the crate's error.
pub(crate) fn read_error(path: &Path, e: std::io::Error) -> IoError {
    if e.kind() == std::io::ErrorKind::NotFound {
        IoError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        IoError::Read {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Element type of a supported array.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Elem {
    F32,
    F64,
}

/// What the header declares.
#[derive(Debug, PartialEq)]
struct Header {
    elem: Elem,
    little_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn read_raw(path: &Path) -> Result<Raw> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let meta = file.metadata().ok();
    if meta.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(IoError::NotNpy {
            path: path.to_path_buf(),
            reason: "it is a directory".into(),
        });
    }
    let mut r = std::io::BufReader::new(file);
    let not_npy = |reason: String| IoError::NotNpy {
        path: path.to_path_buf(),
        reason,
    };

    // Magic, version and header length.
    let mut pre = Vec::with_capacity(12);
    (&mut r)
        .take(8)
        .read_to_end(&mut pre)
        .map_err(|e| read_error(path, e))?;
    if pre.is_empty() {
        return Err(not_npy("the file is empty".into()));
    }
    let magic_len = pre.len().min(MAGIC.len());
    if pre[..magic_len] != MAGIC[..magic_len] {
        return Err(not_npy(
            "it does not start with the .npy magic bytes \\x93NUMPY".into(),
        ));
    }
    if pre.len() < 8 {
        return Err(not_npy(
            "the file ends inside the header (truncated)".into(),
        ));
    }
    let (major, minor) = (pre[6], pre[7]);
    let len_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(not_npy(format!(
                "unsupported format version {major}.{minor}"
            )));
        }
    };
    let mut len_buf = [0u8; 4];
    r.read_exact(&mut len_buf[..len_bytes])
        .map_err(|e| truncated_header(path, e))?;
    let header_len = u32::from_le_bytes(len_buf) as u64;
    let mut text = Vec::new();
    (&mut r)
        .take(header_len)
        .read_to_end(&mut text)
        .map_err(|e| read_error(path, e))?;
    if (text.len() as u64) < header_len {
        return Err(not_npy(
            "the file ends inside the header (truncated)".into(),
        ));
    }
    let text = String::from_utf8_lossy(&text);
    let header = parse_header(&text).map_err(|e| match e {
        HeaderError::Malformed(m) => not_npy(format!("malformed header: {m}")),
        HeaderError::Dtype(dtype) => IoError::Dtype {
            path: path.to_path_buf(),
            dtype,
        },
    })?;

    // Data.
    let size = match header.elem {
        Elem::F32 => 4,
        Elem::F64 => 8,
    };
    let (count, expected) = header
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| Some((n, (n as u64).checked_mul(size)?)))
        .filter(|&(_, b)| b < u64::MAX / 2)
        .ok_or_else(|| not_npy(format!("shape {:?} is too large", header.shape)))?;
    // Room for the whole payload at once (no regrowth: fresh memory is slow to touch), but no
    // more than the file holds, whatever the header claims.
    let file_len = meta.map_or(0, |m| m.len());
    let mut data = Vec::with_capacity((expected + 1).min(file_len) as usize);
    (&mut r)
        .take(expected + 1)
        .read_to_end(&mut data)
        .map_err(|e| read_error(path, e))?;
    let actual = data.len() as u64;
    if actual < expected {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            shape: header.shape,
            dtype: match header.elem {
                Elem::F32 => "float32".into(),
                Elem::F64 => "float64".into(),
            },
            expected,
            actual,
        });
    }
    if actual > expected {
        let rest = std::io::copy(&mut r, &mut std::io::sink()).unwrap_or(0);
        return Err(IoError::TrailingData {
            path: path.to_path_buf(),
            shape: header.shape,
            extra: actual - expected + rest,
        });
    }

    let le = header.little_endian;
    Ok(match header.elem {
        Elem::F32 => Raw::F32(to_standard(
            data.chunks_exact(4)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3]];
                    if le {
                        f32::from_le_bytes(b)
                    } else {
                        f32::from_be_bytes(b)
                    }
                })
                .collect(),
            &header.shape,
            header.fortran_order,
            count,
        )),
        Elem::F64 => Raw::F64(to_standard(
            data.chunks_exact(8)
                .map(|c| {
                    let b: [u8; 8] = c.try_into().expect("chunk of 8");
                    if le {
                        f64::from_le_bytes(b)
                    } else {
                        f64::from_be_bytes(b)
                    }
                })
                .collect(),
            &header.shape,
            header.fortran_order,
            count,
        )),
    })
}

fn truncated_header(path: &Path, e: std::io::Error) -> IoError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        IoError::NotNpy {
            path: path.to_path_buf(),
            reason: "the file ends inside the header (truncated)".into(),
        }
    } else {
        read_error(path, e)
    }
}

/// The array of `shape` whose elements are `data` in C or Fortran order, in standard layout.
fn to_standard<T: Clone>(data: Vec<T>, shape: &[usize], fortran: bool, count: usize) -> ArrayD<T> {
    debug_assert_eq!(data.len(), count);
    if fortran && shape.len() > 1 {
        let f = ArrayD::from_shape_vec(IxDyn(shape).f(), data).expect("length checked");
        let c: Vec<T> = f.iter().cloned().collect();
        ArrayD::from_shape_vec(IxDyn(shape), c).expect("length checked")
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), data).expect("length checked")
    }
}

#[derive(Debug, PartialEq)]
enum HeaderError {
    Malformed(String),
    Dtype(String),
}

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(i128),
    None,
    Seq(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

/// Parses the header dictionary: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> std::result::Result<Header, HeaderError> {
    let bad = |m: &str| HeaderError::Malformed(m.to_string());
    let mut p = LitParser {
        s: text.as_bytes(),
        i: 0,
    };
    let lit = p.value().map_err(HeaderError::Malformed)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(bad("unexpected text after the dictionary"));
    }
    let Lit::Dict(entries) = lit else {
        return Err(bad("it is not a dictionary"));
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, Lit::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| HeaderError::Malformed(format!("no '{key}' entry")))
    };
    let descr = get("descr")?;
    let fortran_order = match get("fortran_order")? {
        Lit::Bool(b) => *b,
        _ => return Err(bad("'fortran_order' is not True or False")),
    };
    let shape = match get("shape")? {
        Lit::Seq(dims) => dims
            .iter()
            .map(|d| match d {
                Lit::Int(n) => usize::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("'shape' is not a tuple of non-negative integers"))?,
        _ => return Err(bad("'shape' is not a tuple")),
    };
    let descr = match descr {
        Lit::Str(s) => s.as_str(),
        Lit::Seq(_) => return Err(HeaderError::Dtype("structured (record)".into())),
        _ => return Err(bad("'descr' is not a string")),
    };
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'=' | b'|') => (descr.as_bytes()[0], &descr[1..]),
        _ => (b'=', descr),
    };
    let elem = match code {
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        _ => return Err(HeaderError::Dtype(dtype_name(code))),
    };
    let little_endian = match order {
        b'<' => true,
        b'>' => false,
        _ => cfg!(target_endian = "little"),
    };
    Ok(Header {
        elem,
        little_endian,
        fortran_order,
        shape,
    })
}

/// The numpy name of a dtype code (`i8` → `int64`), or the code itself in quotes.
fn dtype_name(code: &str) -> String {
    let (kind, rest) = code.split_at(code.chars().next().map_or(0, char::len_utf8));
    let bits = rest.parse::<u32>().ok().map(|b| b * 8);
    match (kind, bits) {
        ("f", Some(b)) => format!("float{b}"),
        ("i", Some(b)) => format!("int{b}"),
        ("u", Some(b)) => format!("uint{b}"),
        ("c", Some(b)) => format!("complex{b}"),
        ("b", Some(8)) => "bool".into(),
        ("O", _) => "object".into(),
        ("U", _) => "str".into(),
        ("S", _) | ("a", _) => "bytes".into(),
        ("M", _) => "datetime64".into(),
        ("m", _) => "timedelta64".into(),
        ("V", _) => "void".into(),
        _ => format!("'{code}'"),
    }
}

/// A recursive-descent parser for the Python literals of `.npy` headers.
struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> std::result::Result<Lit, String> {
        self.value_at(0)
    }

    fn value_at(&mut self, depth: usize) -> std::result::Result<Lit, String> {
        if depth > 32 {
            return Err("nested too deeply".into());
        }
        match self.peek() {
            None => Err("unexpected end of header".into()),
            Some(b'{') => {
                self.i += 1;
                let mut entries = Vec::new();
                loop {
                    if self.eat(b'}') {
                        return Ok(Lit::Dict(entries));
                    }
                    let k = self.value_at(depth + 1)?;
                    if !self.eat(b':') {
                        return Err("expected ':' after a dictionary key".into());
                    }
                    let v = self.value_at(depth + 1)?;
                    entries.push((k, v));
                    if !self.eat(b',') && self.peek() != Some(b'}') {
                        return Err("expected ',' or '}' in the dictionary".into());
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                self.i += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                loop {
                    if self.eat(close) {
                        return Ok(Lit::Seq(items));
                    }
                    items.push(self.value_at(depth + 1)?);
                    if !self.eat(b',') && self.peek() != Some(close) {
                        return Err(format!("expected ',' or '{}'", close as char));
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    if self.s[self.i] == b'\\' {
                        self.i += 1;
                    }
                    self.i += 1;
                }
                if self.i >= self.s.len() {
                    return Err("unterminated string".into());
                }
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(Lit::Str(s))
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                let n = text
                    .parse::<i128>()
                    .map_err(|_| format!("'{text}' is not an integer"))?;
                // Python 2 long suffix.
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1;
                }
                Ok(Lit::Int(n))
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
                {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"True" => Ok(Lit::Bool(true)),
                    b"False" => Ok(Lit::Bool(false)),
                    b"None" => Ok(Lit::None),
                    _ => {
                        let end = (start + 20).min(self.s.len());
                        Err(format!(
                            "unexpected '{}'",
                            one_line(String::from_utf8_lossy(&self.s[start..end]))
                        ))
                    }
                }
            }
        }
    }
}

/// Writes `array` as a standard `.npy` file (float32, little-endian, C order) to `w`.
pub fn write_npy_to(w: &mut dyn Write, array: &ArrayD<f32>) -> std::io::Result<()> {
    let shape = match array.shape() {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 1 has a 2-byte header length; pad magic + version + length + header + '\n' to a
    // multiple of 64 bytes, as numpy does.
    let (version, len_bytes) = if header.len() + 1 + 10 <= u16::MAX as usize {
        (1u8, 2)
    } else {
        (2u8, 4)
    };
    let pre = MAGIC.len() + 2 + len_bytes;
    let total = (pre + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - pre - header.len() - 1));
    header.push('\n');
    w.write_all(MAGIC)?;
    w.write_all(&[version, 0])?;
    let hl = header.len() as u32;
    if len_bytes == 2 {
        w.write_all(&(hl as u16).to_le_bytes())?;
    } else {
        w.write_all(&hl.to_le_bytes())?;
    }
    w.write_all(header.as_bytes())?;
    let mut buf = Vec::with_capacity(64 * 1024);
    for v in array.iter() {
        buf.extend_from_slice(&v.to_le_bytes());
        if buf.len() >= 64 * 1024 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses_numpy_forms() {
        let h = parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }   \n")
            .unwrap();
        assert_eq!(
            h,
            Header {
                elem: Elem::F32,
                little_endian: true,
                fortran_order: false,
                shape: vec![2, 3]
            }
        );
        let h =
            parse_header("{\"shape\": (5,), \"fortran_order\": True, \"descr\": \">f8\"}").unwrap();
        assert_eq!(h.shape, vec![5]);
        assert!(h.fortran_order && !h.little_endian && h.elem == Elem::F64);
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': ()}")
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 4L)}")
                .unwrap()
                .shape,
            vec![3, 4]
        );
    }

    #[test]
    fn header_errors() {
        let dt = |d: &str| {
            parse_header(&format!(
                "{{'descr': {d}, 'fortran_order': False, 'shape': (1,)}}"
            ))
        };
        assert_eq!(dt("'<i8'"), Err(HeaderError::Dtype("int64".into())));
        assert_eq!(dt("'|u1'"), Err(HeaderError::Dtype("uint8".into())));
        assert_eq!(dt("'|b1'"), Err(HeaderError::Dtype("bool".into())));
        assert_eq!(dt("'<f2'"), Err(HeaderError::Dtype("float16".into())));
        assert_eq!(dt("'|O'"), Err(HeaderError::Dtype("object".into())));
        assert_eq!(dt("'<U5'"), Err(HeaderError::Dtype("str".into())));
        assert_eq!(
            dt("[('a', '<f4')]"),
            Err(HeaderError::Dtype("structured (record)".into()))
        );
        for bad in [
            "",
            "{",
            "{'descr': '<f4'}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x",
            "{'descr': '<f4 , 'fortran_order': False, 'shape': (1,)}",
            "((((((((((((((((((((((((((((((((((((((((((((((((((",
            "\u{e9}\u{e9}",
        ] {
            assert!(
                matches!(parse_header(bad), Err(HeaderError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn unravel_is_c_order() {
        assert_eq!(unravel(0, &[2, 3]), vec![0, 0]);
        assert_eq!(unravel(4, &[2, 3]), vec![1, 1]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
    }
}
