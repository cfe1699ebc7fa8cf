//! Reading inputs (`.npy`, images, directories) and writing outputs.

use std::path::{Path, PathBuf};

use lrp_io::{
    IoError, load_image, load_input, read_npy, read_npy_input, write_npy, write_png_gray,
    write_png_rgb,
};
use lrp_ir::{ChannelOrder, InputDef, Layout, Preprocess};
use ndarray::{ArrayD, IxDyn};

// ---------------------------------------------------------------------------------------------
// Helpers

fn input(layout: Layout, shape: &[usize]) -> InputDef {
    InputDef {
        name: "x".into(),
        shape: shape.to_vec(),
        layout,
        preprocess: None,
    }
}

/// A version 1.0 `.npy` file: magic, version, header length, the header dict padded with spaces
/// to a multiple of 64 bytes and ended by a newline, then `data`.
fn npy_bytes(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let fo = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': {fo}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_le(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn arr(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// The error's message, checked to be one line that starts with the path.
fn msg(e: IoError, path: &Path) -> String {
    let m = e.to_string();
    assert!(!m.contains('\n'), "not one line: {m}");
    assert!(
        m.starts_with(&format!("{}: ", path.display())),
        "does not name {}: {m}",
        path.display()
    );
    m
}

/// Writes an RGB PNG from rows of `[r, g, b]` pixels.
fn rgb_png(dir: &Path, name: &str, rows: &[&[[u8; 3]]]) -> PathBuf {
    let p = dir.join(name);
    let (h, w) = (rows.len() as u32, rows[0].len() as u32);
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|r| r.iter().flatten().copied())
        .collect();
    write_png_rgb(&p, w, h, &bytes).unwrap();
    p
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// .npy input

#[test]
fn npy_f32_c_order() {
    let dir = tempfile::tempdir().unwrap();
    let v: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    let p = put(
        dir.path(),
        "x.npy",
        &npy_bytes("<f4", false, "(2, 3, 2, 2)", &f32_le(&v)),
    );
    let a = read_npy_input(&p, &input(Layout::NCHW, &[3, 2, 2])).unwrap();
    assert_eq!(a, arr(&[2, 3, 2, 2], v));
}

#[test]
fn npy_f64_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let v = [0.1f64, -2.5, 1e-3, 7.0, 3.25, -0.0];
    let p = put(
        dir.path(),
        "x.npy",
        &npy_bytes("<f8", false, "(1, 6)", &f64_le(&v)),
    );
    let a = read_npy_input(&p, &input(Layout::Other, &[6])).unwrap();
    assert_eq!(a, arr(&[1, 6], v.iter().map(|&x| x as f32).collect()));
}

#[test]
fn npy_big_endian() {
    let dir = tempfile::tempdir().unwrap();
    let v = [1.5f32, -2.0, 3.0];
    let be: Vec<u8> = v.iter().flat_map(|x| x.to_be_bytes()).collect();
    let p = put(dir.path(), "x.npy", &npy_bytes(">f4", false, "(1, 3)", &be));
    assert_eq!(
        read_npy_input(&p, &input(Layout::Other, &[3])).unwrap(),
        arr(&[1, 3], v.to_vec())
    );
}

#[test]
fn npy_fortran_order_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    // Logical [[1, 2, 3], [4, 5, 6]] stored column by column.
    let p = put(
        dir.path(),
        "f.npy",
        &npy_bytes(
            "<f4",
            true,
            "(2, 3)",
            &f32_le(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]),
        ),
    );
    let a = read_npy_input(&p, &input(Layout::Other, &[3])).unwrap();
    assert_eq!(a, arr(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    assert!(a.is_standard_layout());

    // Three axes: element [i, j, k] stored at i + 2j + 6k.
    let shape = [2usize, 3, 4];
    let mut stored = [0f32; 24];
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                stored[i + 2 * j + 6 * k] = (100 * i + 10 * j + k) as f32;
            }
        }
    }
    let p = put(
        dir.path(),
        "f3.npy",
        &npy_bytes(
            "<f8",
            true,
            "(2, 3, 4)",
            &f64_le(&stored.iter().map(|&x| x as f64).collect::<Vec<_>>()),
        ),
    );
    let a = read_npy_input(&p, &input(Layout::Other, &[3, 4])).unwrap();
    let want = ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
        (100 * ix[0] + 10 * ix[1] + ix[2]) as f32
    });
    assert_eq!(a, want);
}

#[test]
fn npy_written_by_ndarray_npy_reads() {
    use ndarray_npy::WriteNpyExt;
    let dir = tempfile::tempdir().unwrap();
    let want = ArrayD::from_shape_fn(IxDyn(&[2, 4, 4, 3]), |ix| {
        (ix[0] * 48 + ix[1] * 12 + ix[2] * 3 + ix[3]) as f64 / 7.0
    });
    let p = dir.path().join("x.npy");
    want.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
    let a = read_npy_input(&p, &input(Layout::NHWC, &[4, 4, 3])).unwrap();
    assert_eq!(a, want.mapv(|x| x as f32));
    // Fortran layout as written by ndarray-npy.
    let f = want.t().to_owned();
    assert!(!f.is_standard_layout());
    let p = dir.path().join("t.npy");
    f.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
    assert_eq!(read_npy(&p).unwrap(), f.mapv(|x| x as f32));
}

#[test]
fn npy_wrong_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let p = put(
        dir.path(),
        "x.npy",
        &npy_bytes("<i8", false, "(1, 2)", &[0; 16]),
    );
    let m = msg(
        read_npy_input(&p, &input(Layout::Other, &[2])).unwrap_err(),
        &p,
    );
    assert_eq!(
        m,
        format!(
            "{}: dtype int64 is not supported; use float32 or float64",
            p.display()
        )
    );
    for (descr, name) in [
        ("|u1", "uint8"),
        ("<f2", "float16"),
        ("|b1", "bool"),
        ("<c8", "complex64"),
    ] {
        let p = put(
            dir.path(),
            "y.npy",
            &npy_bytes(descr, false, "(1, 2)", &[0; 16]),
        );
        let e = read_npy_input(&p, &input(Layout::Other, &[2])).unwrap_err();
        assert!(matches!(e, IoError::Dtype { .. }));
        assert!(msg(e, &p).contains(&format!("dtype {name} is not supported")));
    }
}

#[test]
fn npy_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let n = 2 * 3 * 32 * 31;
    let p = put(
        dir.path(),
        "x.npy",
        &npy_bytes("<f4", false, "(2, 3, 32, 31)", &vec![0; n * 4]),
    );
    let e = read_npy_input(&p, &input(Layout::NCHW, &[3, 32, 32])).unwrap_err();
    assert!(matches!(e, IoError::Shape { .. }));
    assert_eq!(
        msg(e, &p),
        format!(
            "{}: input has shape [2, 3, 32, 31]; the model takes [N, 3, 32, 32] (NCHW)",
            p.display()
        )
    );

    // NHWC data for an NCHW model: a hint to transpose.
    let p = put(
        dir.path(),
        "t.npy",
        &npy_bytes("<f4", false, "(1, 4, 5, 3)", &[0; 240]),
    );
    let m = msg(
        read_npy_input(&p, &input(Layout::NCHW, &[3, 4, 5])).unwrap_err(),
        &p,
    );
    assert!(
        m.contains("the model takes [N, 3, 4, 5] (NCHW); the array looks like NHWC"),
        "{m}"
    );
    let p = put(
        dir.path(),
        "t2.npy",
        &npy_bytes("<f4", false, "(1, 3, 4, 5)", &[0; 240]),
    );
    let m = msg(
        read_npy_input(&p, &input(Layout::NHWC, &[4, 5, 3])).unwrap_err(),
        &p,
    );
    assert!(m.contains("(NHWC); the array looks like NCHW"), "{m}");

    // Missing batch axis.
    let p = put(
        dir.path(),
        "s.npy",
        &npy_bytes("<f4", false, "(3, 4, 5)", &[0; 240]),
    );
    let m = msg(
        read_npy_input(&p, &input(Layout::NCHW, &[3, 4, 5])).unwrap_err(),
        &p,
    );
    assert!(
        m.contains(
            "input has shape [3, 4, 5]; the model takes [N, 3, 4, 5] (NCHW); add a batch axis"
        ),
        "{m}"
    );

    // Empty batch.
    let p = put(dir.path(), "e.npy", &npy_bytes("<f4", false, "(0, 3)", &[]));
    let m = msg(
        read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err(),
        &p,
    );
    assert!(
        m.contains("input has shape [0, 3]; the model takes [N, 3]; the batch axis"),
        "{m}"
    );
}

#[test]
fn npy_truncated_and_not_npy() {
    let dir = tempfile::tempdir().unwrap();
    let full = npy_bytes("<f4", false, "(2, 3)", &f32_le(&[1.0; 6]));

    // Data cut short.
    let p = put(dir.path(), "short.npy", &full[..full.len() - 4]);
    let e = read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err();
    assert!(
        matches!(
            e,
            IoError::Truncated {
                expected: 24,
                actual: 20,
                ..
            }
        ),
        "{e:?}"
    );
    let m = msg(e, &p);
    assert!(
        m.contains("truncated") && m.contains("24 bytes") && m.contains("only 20"),
        "{m}"
    );

    // Cut inside the header, and inside the magic.
    for (name, len) in [("h.npy", 30), ("m.npy", 4), ("v.npy", 9)] {
        let p = put(dir.path(), name, &full[..len]);
        let e = read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err();
        assert!(matches!(e, IoError::NotNpy { .. }), "{e:?}");
        assert!(msg(e, &p).contains("truncated"));
    }

    // Trailing bytes.
    let mut long = full.clone();
    long.extend_from_slice(&[0; 5]);
    let p = put(dir.path(), "long.npy", &long);
    let m = msg(
        read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err(),
        &p,
    );
    assert!(m.contains("5 unexpected byte(s)"), "{m}");

    // Not a .npy at all; empty; garbage header; unsupported version.
    let p = put(dir.path(), "text.npy", b"hello, world\n1,2,3\n");
    let m = msg(
        read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err(),
        &p,
    );
    assert!(
        m.contains("not a valid .npy file") && m.contains("magic"),
        "{m}"
    );
    let p = put(dir.path(), "empty.npy", b"");
    assert!(
        msg(
            read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err(),
            &p
        )
        .contains("empty")
    );
    let mut bad = b"\x93NUMPY\x01\x00\x10\x00".to_vec();
    bad.extend_from_slice(b"{'descr': <f4 }\n");
    let p = put(dir.path(), "bad.npy", &bad);
    assert!(
        msg(
            read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err(),
            &p
        )
        .contains("malformed header")
    );
    let mut v9 = full.clone();
    v9[6] = 9;
    let p = put(dir.path(), "v9.npy", &v9);
    assert!(
        msg(
            read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err(),
            &p
        )
        .contains("version 9.0")
    );

    // A header promising an absurd amount of data.
    let p = put(
        dir.path(),
        "huge.npy",
        &npy_bytes(
            "<f8",
            false,
            "(9223372036854775807, 9223372036854775807)",
            &[],
        ),
    );
    assert!(read_npy_input(&p, &input(Layout::Other, &[3])).is_err());
    let p = put(
        dir.path(),
        "big.npy",
        &npy_bytes("<f8", false, "(1000000000, 3)", &[0; 8]),
    );
    let e = read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err();
    assert!(matches!(e, IoError::Truncated { .. }), "{e:?}");
}

#[test]
fn npy_non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = vec![0f32; 24];
    v[13] = f32::NAN; // [1, 0, 0, 1] in (2, 3, 2, 2)
    v[20] = f32::INFINITY;
    let p = put(
        dir.path(),
        "nan.npy",
        &npy_bytes("<f4", false, "(2, 3, 2, 2)", &f32_le(&v)),
    );
    let e = read_npy_input(&p, &input(Layout::NCHW, &[3, 2, 2])).unwrap_err();
    assert_eq!(
        msg(e, &p),
        format!(
            "{}: value at index [1, 0, 0, 1] is NaN; inputs must be finite",
            p.display()
        )
    );

    let p = put(
        dir.path(),
        "inf.npy",
        &npy_bytes(
            "<f8",
            false,
            "(1, 3)",
            &f64_le(&[0.0, f64::NEG_INFINITY, 1.0]),
        ),
    );
    let m = msg(
        read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err(),
        &p,
    );
    assert!(m.contains("index [0, 1] is -inf"), "{m}");

    let p = put(
        dir.path(),
        "big.npy",
        &npy_bytes("<f8", false, "(1, 3)", &f64_le(&[0.0, 1.0, 1e300])),
    );
    let e = read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err();
    assert!(matches!(e, IoError::OutOfRange { .. }));
    assert!(msg(e, &p).contains("index [0, 2] is 1e300, outside the float32 range"));

    // Fortran order: the index is the logical one.
    let p = put(
        dir.path(),
        "fnan.npy",
        &npy_bytes(
            "<f4",
            true,
            "(2, 3)",
            &f32_le(&[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]),
        ),
    );
    let m = msg(
        read_npy_input(&p, &input(Layout::Other, &[3])).unwrap_err(),
        &p,
    );
    assert!(m.contains("index [1, 0] is NaN"), "{m}");
}

// ---------------------------------------------------------------------------------------------
// .npy output

#[test]
fn write_npy_is_standard() {
    use ndarray_npy::ReadNpyExt;
    let dir = tempfile::tempdir().unwrap();
    let a = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |ix| {
        (ix[0] * 12 + ix[1] * 4 + ix[2]) as f32 - 5.5
    });
    let p = dir.path().join("r.npy");
    write_npy(&p, &a).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hl) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + hl]).unwrap();
    assert!(
        header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }"),
        "{header}"
    );
    assert!(header.ends_with('\n'));
    assert_eq!(bytes.len(), 10 + hl + 24 * 4);
    let back = ArrayD::<f32>::read_npy(std::fs::File::open(&p).unwrap()).unwrap();
    assert_eq!(back, a);
    assert_eq!(read_npy(&p).unwrap(), a);

    // Non-standard layouts are written in logical order; 1-d and 0-d shapes.
    let t = a.t().to_owned();
    write_npy(&p, &t).unwrap();
    assert_eq!(
        ArrayD::<f32>::read_npy(std::fs::File::open(&p).unwrap()).unwrap(),
        t
    );
    let one = arr(&[3], vec![1.0, 2.0, 3.0]);
    write_npy(&p, &one).unwrap();
    assert_eq!(
        ArrayD::<f32>::read_npy(std::fs::File::open(&p).unwrap()).unwrap(),
        one
    );
    let zero = arr(&[], vec![4.0]);
    write_npy(&p, &zero).unwrap();
    assert_eq!(read_npy(&p).unwrap(), zero);
    assert_eq!(leftovers(dir.path()), vec!["r.npy".to_string()]);
}

#[test]
fn write_errors_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let a = arr(&[2], vec![1.0, 2.0]);

    // A path inside a folder that does not exist.
    let p = dir.path().join("no/such/dir/r.npy");
    let e = write_npy(&p, &a).unwrap_err();
    assert!(matches!(e, IoError::Write { .. }));
    assert!(!e.is_bad_input());
    let m = msg(e, &p);
    assert!(
        m.contains("cannot write") && m.contains("does not exist"),
        "{m}"
    );
    let e = write_png_rgb(&p.with_extension("png"), 1, 1, &[0, 0, 0]).unwrap_err();
    assert!(matches!(e, IoError::Write { .. }));

    // The target is a directory: the temporary file is created, then the rename fails.
    let target = dir.path().join("out");
    std::fs::create_dir(&target).unwrap();
    let m = msg(write_npy(&target, &a).unwrap_err(), &target);
    assert!(m.contains("cannot write"), "{m}");
    assert!(!m.contains(".lrp-tmp"), "{m}");
    assert!(write_png_gray(&target, 1, 1, &[7]).is_err());
    assert_eq!(leftovers(dir.path()), vec!["out".to_string()]);
    assert!(leftovers(&target).is_empty());

    // The temporary file cannot be created: no temporary name in the message.
    #[cfg(target_os = "linux")]
    if Path::new("/proc/self").is_dir() {
        let p = Path::new("/proc/lrp-io-test.npy");
        let m = msg(write_npy(p, &a).unwrap_err(), p);
        assert!(!m.contains(".lrp-tmp") && m.contains("cannot write"), "{m}");
    }

    // The parent is a file.
    let file = put(dir.path(), "plain", b"x");
    let p = file.join("r.npy");
    assert!(msg(write_npy(&p, &a).unwrap_err(), &p).contains("is not a directory"));

    // A pixel buffer of the wrong size.
    let p = dir.path().join("h.png");
    let m = msg(write_png_rgb(&p, 2, 2, &[0; 11]).unwrap_err(), &p);
    assert!(m.contains("needs 12 bytes, got 11"), "{m}");
    assert!(write_png_gray(&p, 0, 0, &[]).is_err());
    assert!(!p.exists());
}

#[test]
fn png_writers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rgb.png");
    let px: Vec<u8> = (0..18).map(|i| i * 13).collect();
    write_png_rgb(&p, 3, 2, &px).unwrap();
    let img = image::open(&p).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgb8);
    assert_eq!(img.to_rgb8().into_raw(), px);
    let p = dir.path().join("g.png");
    write_png_gray(&p, 2, 3, &[1, 2, 3, 4, 5, 250]).unwrap();
    let img = image::open(&p).unwrap();
    assert_eq!(img.color(), image::ColorType::L8);
    assert_eq!(img.to_luma8().into_raw(), vec![1, 2, 3, 4, 5, 250]);
}

// ---------------------------------------------------------------------------------------------
// Images

const R: [u8; 3] = [255, 0, 0];
const G: [u8; 3] = [0, 255, 0];
const B: [u8; 3] = [0, 0, 255];
const W: [u8; 3] = [255, 255, 255];
const K: [u8; 3] = [10, 20, 30];
const Y: [u8; 3] = [200, 100, 0];

#[test]
fn image_grey_nchw() {
    let dir = tempfile::tempdir().unwrap();
    let p = rgb_png(dir.path(), "a.png", &[&[R, G, B], &[W, K, Y]]);
    let x = load_image(&p, &input(Layout::NCHW, &[1, 2, 3]), &Preprocess::none()).unwrap();
    // BT.601 luma, rounded: 0.299 R + 0.587 G + 0.114 B.
    let luma = |[r, g, b]: [u8; 3]| {
        (0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64).round() as f32
    };
    assert_eq!(luma(R), 76.0);
    assert_eq!(luma(G), 150.0);
    assert_eq!(luma(B), 29.0);
    assert_eq!(luma(K), 18.0);
    // 0.299·200 + 0.587·100 is exactly 118.5; the 16-bit fixed-point weights (19595, 38470,
    // 7471, as PIL's convert("L")) give 118.
    assert_eq!(
        x,
        arr(&[1, 2, 3], vec![76.0, 150.0, 29.0, 255.0, 18.0, 118.0])
    );

    // A grey PNG is taken as it is.
    let p = dir.path().join("g.png");
    write_png_gray(&p, 3, 1, &[0, 77, 255]).unwrap();
    let x = load_image(&p, &input(Layout::NHWC, &[1, 3, 1]), &Preprocess::none()).unwrap();
    assert_eq!(x, arr(&[1, 3, 1], vec![0.0, 77.0, 255.0]));
}

#[test]
fn image_rgb_nhwc() {
    let dir = tempfile::tempdir().unwrap();
    let p = rgb_png(dir.path(), "a.png", &[&[R, G, B], &[W, K, Y]]);
    let x = load_image(&p, &input(Layout::NHWC, &[2, 3, 3]), &Preprocess::none()).unwrap();
    let want: Vec<f32> = [R, G, B, W, K, Y]
        .iter()
        .flatten()
        .map(|&v| v as f32)
        .collect();
    assert_eq!(x, arr(&[2, 3, 3], want));
}

#[test]
fn image_bgr_mean_std_nchw() {
    let dir = tempfile::tempdir().unwrap();
    let p = rgb_png(dir.path(), "a.png", &[&[K, Y]]);
    let pre = Preprocess {
        order: ChannelOrder::BGR,
        scale: 0.5,
        mean: vec![1.0, 2.0, 3.0],
        std: vec![2.0, 4.0, 8.0],
        resize: None,
        ..Preprocess::none()
    };
    let x = load_image(&p, &input(Layout::NCHW, &[3, 1, 2]), &pre).unwrap();
    // Model channel 0 is blue, 1 green, 2 red; mean/std in that order.
    let v = |p: u8, c: usize| (p as f32 * 0.5 - pre.mean[c]) / pre.std[c];
    let want = vec![
        v(K[2], 0),
        v(Y[2], 0),
        v(K[1], 1),
        v(Y[1], 1),
        v(K[0], 2),
        v(Y[0], 2),
    ];
    assert_eq!(want[0], (30.0 * 0.5 - 1.0) / 2.0);
    assert_eq!(x, arr(&[3, 1, 2], want));

    // The same in NHWC, and a recorded caffe preprocess through load_input.
    let x = load_image(&p, &input(Layout::NHWC, &[1, 2, 3]), &Preprocess::caffe()).unwrap();
    let mean = Preprocess::caffe().mean;
    let mean = &mean;
    let want: Vec<f32> = [K, Y]
        .iter()
        .flat_map(|px| (0..3).map(move |ch| px[2 - ch] as f32 - mean[ch]))
        .collect();
    assert_eq!(x, arr(&[1, 2, 3], want.clone()));
    let mut def = input(Layout::NHWC, &[1, 2, 3]);
    def.preprocess = Some(Preprocess::caffe());
    let (b, src) = load_input(&p, &def, None).unwrap();
    assert_eq!(b, arr(&[1, 1, 2, 3], want));
    assert_eq!(src, vec![p.clone()]);
    // An override wins over the recorded preprocessing.
    let (b, _) = load_input(&p, &def, Some(&Preprocess::none())).unwrap();
    assert_eq!(b[[0, 0, 0, 0]], K[0] as f32);
}

#[test]
fn image_rgba_and_16_bit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rgba.png");
    let img = image::RgbaImage::from_raw(2, 1, vec![10, 20, 30, 0, 200, 100, 0, 128]).unwrap();
    img.save(&p).unwrap();
    let x = load_image(&p, &input(Layout::NCHW, &[3, 1, 2]), &Preprocess::none()).unwrap();
    assert_eq!(
        x,
        arr(&[3, 1, 2], vec![10.0, 200.0, 20.0, 100.0, 30.0, 0.0])
    );

    let p = dir.path().join("rgb16.png");
    let raw: Vec<u16> = [1u16, 2, 3, 250, 128, 0].iter().map(|v| v * 257).collect();
    let img: image::ImageBuffer<image::Rgb<u16>, Vec<u16>> =
        image::ImageBuffer::from_raw(2, 1, raw).unwrap();
    img.save(&p).unwrap();
    let x = load_image(&p, &input(Layout::NHWC, &[1, 2, 3]), &Preprocess::none()).unwrap();
    assert_eq!(x, arr(&[1, 2, 3], vec![1.0, 2.0, 3.0, 250.0, 128.0, 0.0]));

    // A grey image for a colour model: the grey level in every channel.
    let p = dir.path().join("g.png");
    write_png_gray(&p, 1, 1, &[99]).unwrap();
    let x = load_image(&p, &input(Layout::NCHW, &[3, 1, 1]), &Preprocess::none()).unwrap();
    assert_eq!(x, arr(&[3, 1, 1], vec![99.0; 3]));
}

#[test]
fn image_resize_then_center_crop() {
    let dir = tempfile::tempdir().unwrap();
    // 4 rows × 6 columns of distinct grey levels.
    let px: Vec<u8> = (0..24).map(|i| i * 10).collect();
    let p = dir.path().join("g.png");
    write_png_gray(&p, 6, 4, &px).unwrap();
    let pre = Preprocess {
        resize: Some([4, 6]),
        ..Preprocess::none()
    };
    let x = load_image(&p, &input(Layout::NCHW, &[1, 2, 2]), &pre).unwrap();
    // Rows 1..3, columns 2..4.
    assert_eq!(x, arr(&[1, 2, 2], vec![80.0, 90.0, 140.0, 150.0]));

    // Odd margins round down: a 3×5 crop of 4×6 starts at row 0, column 0.
    let x = load_image(&p, &input(Layout::NHWC, &[3, 5, 1]), &pre).unwrap();
    assert_eq!(x[[0, 0, 0]], 0.0);
    assert_eq!(x[[2, 4, 0]], 160.0);

    // A uniform image stays uniform through real resizing and cropping.
    let p = rgb_png(dir.path(), "u.png", &[&[Y, Y, Y], &[Y, Y, Y]]);
    let pre = Preprocess {
        resize: Some([8, 9]),
        ..Preprocess::none()
    };
    let x = load_image(&p, &input(Layout::NCHW, &[3, 5, 7]), &pre).unwrap();
    assert_eq!(x.shape(), &[3, 5, 7]);
    for (c, &level) in Y.iter().enumerate() {
        let plane = x.index_axis(ndarray::Axis(0), c);
        assert!(plane.iter().all(|&v| v == level as f32));
    }

    // No resize given: straight to the input size.
    let x = load_image(&p, &input(Layout::NHWC, &[4, 4, 3]), &Preprocess::none()).unwrap();
    assert_eq!(x.shape(), &[4, 4, 3]);
    assert!(x.iter().enumerate().all(|(i, &v)| v == Y[i % 3] as f32));

    // A resize smaller than the input is rejected.
    let pre = Preprocess {
        resize: Some([2, 2]),
        ..Preprocess::none()
    };
    let e = load_image(&p, &input(Layout::NCHW, &[3, 4, 4]), &pre).unwrap_err();
    assert!(matches!(e, IoError::NotImageInput { .. }));
    assert!(msg(e, &p).contains("smaller than the input"));
}

#[test]
fn image_jpeg_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("photo.JPG");
    let img = image::RgbImage::from_pixel(16, 16, image::Rgb([200, 100, 50]));
    img.save_with_format(&p, image::ImageFormat::Jpeg).unwrap();
    let (x, _) = load_input(&p, &input(Layout::NCHW, &[3, 16, 16]), None).unwrap();
    assert_eq!(x.shape(), &[1, 3, 16, 16]);
    for (c, want) in [200.0f32, 100.0, 50.0].iter().enumerate() {
        let m = x.index_axis(ndarray::Axis(1), c).mean().unwrap();
        assert!((m - want).abs() < 3.0, "channel {c}: {m}");
    }
}

#[test]
fn image_errors() {
    let dir = tempfile::tempdir().unwrap();
    let def = input(Layout::NCHW, &[3, 2, 2]);

    // Random bytes named .png.
    let bytes: Vec<u8> = (0u32..300)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let p = put(dir.path(), "bad.png", &bytes);
    let e = load_image(&p, &def, &Preprocess::none()).unwrap_err();
    assert!(matches!(e, IoError::Decode { .. }));
    assert!(e.is_bad_input());
    assert!(msg(e, &p).contains("cannot decode image: "));

    // A PNG cut short.
    let good = rgb_png(dir.path(), "good.png", &[&[R, G], &[B, W]]);
    let full = std::fs::read(&good).unwrap();
    let p = put(dir.path(), "cut.png", &full[..full.len() / 2]);
    let e = load_image(&p, &def, &Preprocess::none()).unwrap_err();
    assert!(matches!(e, IoError::Decode { .. }), "{e:?}");
    msg(e, &p);

    // A model input that is not an image.
    let e = load_image(&good, &input(Layout::Other, &[10]), &Preprocess::none()).unwrap_err();
    assert!(matches!(e, IoError::NotImageInput { .. }));
    assert!(msg(e, &good).contains("not an image input"));
    let e = load_image(&good, &input(Layout::NCHW, &[4, 2, 2]), &Preprocess::none()).unwrap_err();
    assert!(msg(e, &good).contains("4 channels"));

    // Preprocessing that does not fit the input.
    let pre = Preprocess {
        mean: vec![1.0, 2.0],
        ..Preprocess::none()
    };
    assert!(matches!(
        load_image(&good, &def, &pre),
        Err(IoError::NotImageInput { .. })
    ));

    // Missing file.
    let p = dir.path().join("missing.png");
    let e = load_image(&p, &def, &Preprocess::none()).unwrap_err();
    assert!(matches!(e, IoError::NotFound { .. }));
    assert_eq!(
        msg(e, &p),
        format!("{}: no such file or directory", p.display())
    );
}

// ---------------------------------------------------------------------------------------------
// load_input dispatch

#[test]
fn directory_is_a_batch_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = rgb_png(dir.path(), "b.png", &[&[R, G]]);
    let a = rgb_png(dir.path(), "a.PNG", &[&[B, W]]);
    put(dir.path(), "notes.txt", b"not an image");
    put(dir.path(), "x.npy", b"not an image either");
    put(dir.path(), "._a.png", b"macOS resource fork");
    std::fs::create_dir(dir.path().join("sub.png")).unwrap();
    let (x, src) = load_input(dir.path(), &input(Layout::NHWC, &[1, 2, 3]), None).unwrap();
    assert_eq!(src, vec![a, b]);
    let want: Vec<f32> = [B, W, R, G].iter().flatten().map(|&v| v as f32).collect();
    assert_eq!(x, arr(&[2, 1, 2, 3], want));
}

#[test]
fn load_input_npy_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let def = input(Layout::NCHW, &[1, 2, 2]);
    let p = put(
        dir.path(),
        "x.NPY",
        &npy_bytes("<f4", false, "(1, 1, 2, 2)", &f32_le(&[1.0, 2.0, 3.0, 4.0])),
    );
    let (x, src) = load_input(&p, &def, None).unwrap();
    assert_eq!(x, arr(&[1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    assert_eq!(src, vec![p]);

    // Empty directory (and one with no images).
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = load_input(&empty, &def, None).unwrap_err();
    assert!(matches!(e, IoError::EmptyDir { .. }));
    assert!(msg(e, &empty).contains("no .png, .jpg or .jpeg images"));

    // A directory for a model that does not take images.
    let e = load_input(&empty, &input(Layout::Other, &[4]), None).unwrap_err();
    assert!(matches!(e, IoError::NotImageInput { .. }));

    // A bad image inside a directory names that image.
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    rgb_png(&imgs, "a.png", &[&[R, G], &[B, W]]);
    let bad = put(&imgs, "b.jpg", b"\xff\xd8\xff garbage");
    let e = load_input(&imgs, &input(Layout::NCHW, &[3, 2, 2]), None).unwrap_err();
    assert!(matches!(e, IoError::Decode { .. }));
    msg(e, &bad);

    // Missing path.
    let p = dir.path().join("nope.npy");
    let e = load_input(&p, &def, None).unwrap_err();
    assert!(matches!(e, IoError::NotFound { .. }));
    msg(e, &p);

    // Unsupported kind.
    let p = put(dir.path(), "x.csv", b"1,2,3,4");
    let e = load_input(&p, &def, None).unwrap_err();
    assert!(matches!(e, IoError::UnsupportedInput { .. }));
    let m = msg(e, &p);
    assert!(
        m.contains(".npy") && m.contains(".png") && m.contains(".jpg") && m.contains("directory"),
        "{m}"
    );
    let p = put(dir.path(), "noext", b"1,2,3,4");
    assert!(matches!(
        load_input(&p, &def, None),
        Err(IoError::UnsupportedInput { .. })
    ));
}

#[test]
fn mangled_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let def = input(Layout::NCHW, &[1, 2, 2]);
    let good = npy_bytes("<f4", false, "(1, 1, 2, 2)", &f32_le(&[1.0, 2.0, 3.0, 4.0]));
    let p = dir.path().join("m.npy");
    for len in 0..good.len() {
        std::fs::write(&p, &good[..len]).unwrap();
        assert!(read_npy_input(&p, &def).is_err());
    }
    for i in 0..good.len() {
        for v in [0u8, b' ', b'(', b')', b'\'', b'9', b'{', 0xff] {
            let mut b = good.clone();
            b[i] = v;
            std::fs::write(&p, &b).unwrap();
            if let Err(e) = read_npy_input(&p, &def) {
                msg(e, &p);
            }
        }
    }
    let png = rgb_png(dir.path(), "g.png", &[&[R, G], &[B, W]]);
    let good = std::fs::read(&png).unwrap();
    let p = dir.path().join("m.png");
    for len in (0..good.len()).step_by(3) {
        std::fs::write(&p, &good[..len]).unwrap();
        if let Err(e) = load_input(&p, &input(Layout::NCHW, &[3, 2, 2]), None) {
            msg(e, &p);
        }
    }
}

/// `fit` and `filter`: a 2×4 grey ramp (values 0, 10, 20, 30 per row) into a 2×2 input.
#[test]
fn image_fit_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let px = |v: u8| [v, v, v];
    let row: Vec<[u8; 3]> = [0, 10, 20, 30].into_iter().map(px).collect();
    let p = rgb_png(dir.path(), "ramp.png", &[&row, &row]);
    let inp = input(Layout::NCHW, &[1, 2, 2]);
    let load = |pre: &str| {
        let pre: Preprocess = pre.parse().unwrap();
        load_image(&p, &inp, &pre)
            .unwrap()
            .into_raw_vec_and_offset()
            .0
    };
    // Centre crop at the image's resolution: the middle columns.
    assert_eq!(load("fit=crop"), vec![10.0, 20.0, 10.0, 20.0]);
    // Shorter side 2 already matches: no scaling, then the centre crop.
    assert_eq!(load("fit=shorter"), vec![10.0, 20.0, 10.0, 20.0]);
    // Stretch 4 → 2 columns with nearest sampling: target centres 0.5 and 1.5 map to source
    // positions 1.0 and 3.0, which fall on pixels 1 and 3 (the image crate's convention).
    assert_eq!(
        load("fit=stretch,filter=nearest"),
        vec![10.0, 30.0, 10.0, 30.0]
    );
    // Bilinear averages neighbours instead.
    assert_ne!(load("fit=stretch"), load("fit=stretch,filter=nearest"));
    // A mode first, then keys.
    let pre: Preprocess = "torch,fit=shorter,filter=nearest".parse().unwrap();
    assert_eq!(pre.scale, Preprocess::torch().scale);
    assert_eq!(pre.fit, lrp_ir::Fit::Shorter);
    assert!("fit=shorter,torch".parse::<Preprocess>().is_err());
    assert!("fit=sideways".parse::<Preprocess>().is_err());
    // An image smaller than the crop is refused with a hint.
    let big = input(Layout::NCHW, &[1, 4, 4]);
    let e = load_image(&p, &big, &"fit=crop".parse().unwrap()).unwrap_err();
    assert!(msg(e, &p).contains("fit=shorter"));
}
