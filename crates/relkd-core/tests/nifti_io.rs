//! NIfTI reading and writing, checked against files assembled byte by byte from the NIfTI-1
//! standard's header layout, so the tests do not trust the reader they test.

use std::io::Write;
use std::path::Path;

use relkd_core::nifti_io::{NiftiError, new_header, read_volume, write_mask, write_volume};

/// A NIfTI-1 single file (`n+1`) built by hand: 348-byte header, 4 bytes of extension flag,
/// then voxels x fastest.
struct RawNifti {
    dims: Vec<u16>,
    datatype: i16,
    bitpix: i16,
    pixdim: [f32; 8],
    slope: f32,
    inter: f32,
    qform: Option<([f32; 3], [f32; 3])>,
    sform: Option<[[f32; 4]; 3]>,
    sizeof_hdr: i32,
    data: Vec<u8>,
}

impl RawNifti {
    fn new(dims: &[u16], datatype: i16, bitpix: i16, data: Vec<u8>) -> Self {
        Self {
            dims: dims.to_vec(),
            datatype,
            bitpix,
            pixdim: [1.0, 0.5, 0.75, 3.0, 1.0, 1.0, 1.0, 1.0],
            slope: 0.0,
            inter: 0.0,
            qform: None,
            sform: None,
            sizeof_hdr: 348,
            data,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; 352];
        let put = |h: &mut Vec<u8>, at: usize, b: &[u8]| h[at..at + b.len()].copy_from_slice(b);
        put(&mut h, 0, &self.sizeof_hdr.to_le_bytes());
        put(&mut h, 40, &(self.dims.len() as i16).to_le_bytes());
        for (i, d) in self.dims.iter().enumerate() {
            put(&mut h, 42 + 2 * i, &(*d as i16).to_le_bytes());
        }
        for i in self.dims.len()..7 {
            put(&mut h, 42 + 2 * i, &1i16.to_le_bytes());
        }
        put(&mut h, 70, &self.datatype.to_le_bytes());
        put(&mut h, 72, &self.bitpix.to_le_bytes());
        for (i, p) in self.pixdim.iter().enumerate() {
            put(&mut h, 76 + 4 * i, &p.to_le_bytes());
        }
        put(&mut h, 108, &352f32.to_le_bytes());
        put(&mut h, 112, &self.slope.to_le_bytes());
        put(&mut h, 116, &self.inter.to_le_bytes());
        if let Some((quat, offset)) = self.qform {
            put(&mut h, 252, &1i16.to_le_bytes());
            for (i, v) in quat.iter().chain(&offset).enumerate() {
                put(&mut h, 256 + 4 * i, &v.to_le_bytes());
            }
        }
        if let Some(rows) = self.sform {
            put(&mut h, 254, &1i16.to_le_bytes());
            for (i, v) in rows.iter().flatten().enumerate() {
                put(&mut h, 280 + 4 * i, &v.to_le_bytes());
            }
        }
        put(&mut h, 344, b"n+1\0");
        h.extend_from_slice(&self.data);
        h
    }

    fn write(&self, path: &Path) {
        let bytes = self.bytes();
        if path.to_string_lossy().ends_with(".gz") {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            std::fs::write(path, gz.finish().unwrap()).unwrap();
        } else {
            std::fs::write(path, bytes).unwrap();
        }
    }
}

/// Voxel value at (x, y, z) for the axis-order checks.
fn pattern(x: usize, y: usize, z: usize) -> f64 {
    (x + 10 * y + 100 * z) as f64
}

const DIMS: [usize; 3] = [4, 3, 2];

fn pattern_bytes(encode: impl Fn(f64) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for z in 0..DIMS[2] {
        for y in 0..DIMS[1] {
            for x in 0..DIMS[0] {
                out.extend(encode(pattern(x, y, z)));
            }
        }
    }
    out
}

#[test]
fn every_datatype_reads_with_axes_and_scaling() {
    let dir = tempfile::tempdir().unwrap();
    type Encoder = fn(f64) -> Vec<u8>;
    let cases: [(&str, i16, i16, Encoder); 6] = [
        ("uint8", 2, 8, |v| vec![(v as u64 % 251) as u8]),
        ("int16", 4, 16, |v| (v as i16 - 50).to_le_bytes().to_vec()),
        ("uint16", 512, 16, |v| (v as u16 + 40000).to_le_bytes().to_vec()),
        ("int32", 8, 32, |v| (v as i32 - 100_000).to_le_bytes().to_vec()),
        ("float32", 16, 32, |v| (v as f32 * 0.5).to_le_bytes().to_vec()),
        ("float64", 64, 64, |v| (v * -0.25).to_le_bytes().to_vec()),
    ];
    let decode: [fn(f64) -> f64; 6] =
        [|v| (v as u64 % 251) as f64, |v| v - 50.0, |v| v + 40000.0, |v| v - 100_000.0, |v| v * 0.5, |v| v * -0.25];
    for ((name, code, bitpix, encode), decode) in cases.into_iter().zip(decode) {
        for (ext, slope, inter) in [("nii", 0.0f32, 0.0f32), ("nii.gz", 2.0, -3.0)] {
            let path = dir.path().join(format!("{name}.{ext}"));
            let mut raw = RawNifti::new(&[4, 3, 2], code, bitpix, pattern_bytes(encode));
            raw.slope = slope;
            raw.inter = inter;
            raw.write(&path);
            let vol = read_volume(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(vol.dims, DIMS);
            assert_eq!(vol.spacing, [0.5, 0.75, 3.0]);
            let (a, b) = if slope == 0.0 { (1.0, 0.0) } else { (slope as f64, inter as f64) };
            for z in 0..2 {
                for y in 0..3 {
                    for x in 0..4 {
                        let want = a * decode(pattern(x, y, z)) + b;
                        let got = vol.data[vol.index(x, y, z)] as f64;
                        assert!((got - want).abs() <= want.abs() * 1e-6, "{name} {ext} ({x},{y},{z}): {got} vs {want}");
                    }
                }
            }
            // Axial slice z = 1 is contiguous, rows along y.
            assert_eq!(vol.slice(1).len(), 12);
        }
    }
}

#[test]
fn four_d_with_one_frame_reads_as_three_d() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t1.nii");
    RawNifti::new(&[4, 3, 2, 1], 2, 8, vec![7; 24]).write(&path);
    assert_eq!(read_volume(&path).unwrap().dims, [4, 3, 2]);
}

#[test]
fn wrong_dimensionality_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let two_d = dir.path().join("flat.nii");
    RawNifti::new(&[4, 3], 2, 8, vec![0; 12]).write(&two_d);
    let err = read_volume(&two_d).unwrap_err();
    assert!(matches!(err, NiftiError::NotThreeD { .. }), "{err}");
    assert!(err.to_string().contains("flat.nii"));
    let four_d = dir.path().join("frames.nii");
    RawNifti::new(&[2, 2, 2, 3], 2, 8, vec![0; 24]).write(&four_d);
    assert!(matches!(read_volume(&four_d).unwrap_err(), NiftiError::NotThreeD { .. }));
}

#[test]
fn truncated_gzip_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.nii.gz");
    RawNifti::new(&[16, 16, 8], 4, 16, pattern_bytes(|_| vec![1, 2]).repeat(86)).write(&whole);
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.nii.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_volume(&cut).unwrap_err();
    assert!(matches!(err, NiftiError::CorruptGzip { .. }), "{err}");
    assert!(err.to_string().contains("cut.nii.gz"), "{err}");

    // An uncompressed file cut short is reported as truncated, not as garbage.
    let short = dir.path().join("short.nii");
    let mut raw = RawNifti::new(&[4, 3, 2], 2, 8, vec![0; 24]).bytes();
    raw.truncate(352 + 10);
    std::fs::write(&short, raw).unwrap();
    assert!(matches!(read_volume(&short).unwrap_err(), NiftiError::Truncated { .. }));
}

#[test]
fn nifti2_unsupported_types_and_nan_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let n2 = dir.path().join("n2.nii");
    let mut raw = RawNifti::new(&[2, 2, 2], 2, 8, vec![0; 8]);
    raw.sizeof_hdr = 540;
    raw.write(&n2);
    assert!(matches!(read_volume(&n2).unwrap_err(), NiftiError::Nifti2 { .. }));

    let complex = dir.path().join("complex.nii");
    RawNifti::new(&[2, 2, 2], 32, 64, vec![0; 64]).write(&complex);
    let err = read_volume(&complex).unwrap_err();
    assert!(matches!(err, NiftiError::UnsupportedDatatype { code: 32, .. }), "{err}");

    let nan = dir.path().join("nan.nii");
    let mut data = vec![0u8; 32];
    data[4 * 5..4 * 6].copy_from_slice(&f32::NAN.to_le_bytes());
    RawNifti::new(&[2, 2, 2], 16, 32, data).write(&nan);
    match read_volume(&nan).unwrap_err() {
        NiftiError::NonFinite { count, first, .. } => assert_eq!((count, first), (1, [1, 0, 1])),
        other => panic!("{other}"),
    }

    let missing = dir.path().join("absent.nii.gz");
    assert!(read_volume(&missing).unwrap_err().to_string().contains("absent.nii.gz"));
}

#[test]
fn affine_from_sform_then_qform_then_pixdim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.nii");
    // qform: 90° about z (b = c = 0, d = sin 45°), qfac = -1, offset (10, 20, 30).
    let mut raw = RawNifti::new(&[2, 2, 2], 2, 8, vec![0; 8]);
    raw.pixdim[0] = -1.0;
    raw.qform = Some(([0.0, 0.0, std::f32::consts::FRAC_1_SQRT_2], [10.0, 20.0, 30.0]));
    raw.write(&path);
    let a = read_volume(&path).unwrap().affine;
    let want = [[0.0, -0.75, 0.0, 10.0], [0.5, 0.0, 0.0, 20.0], [0.0, 0.0, -3.0, 30.0], [0.0, 0.0, 0.0, 1.0]];
    for r in 0..4 {
        for c in 0..4 {
            assert!((a[r][c] - want[r][c]).abs() < 1e-6, "{a:?}");
        }
    }
    // sform wins when both are set.
    raw.sform = Some([[-0.5, 0.0, 0.0, 1.0], [0.0, 0.75, 0.0, 2.0], [0.0, 0.1, 3.0, 4.0]]);
    raw.write(&path);
    let a = read_volume(&path).unwrap().affine;
    assert_eq!(a[0], [-0.5, 0.0, 0.0, 1.0]);
    assert!((a[2][1] - 0.1).abs() < 1e-7);
    // Neither: pixdim scaling.
    raw.sform = None;
    raw.qform = None;
    raw.write(&path);
    let a = read_volume(&path).unwrap().affine;
    assert_eq!((a[0][0], a[1][1], a[2][2], a[0][3]), (0.5, 0.75, 3.0, 0.0));
}

/// Reads the header fields of a written file straight from its bytes.
fn raw_header(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out).unwrap();
    out
}

fn f32_at(h: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(h[at..at + 4].try_into().unwrap())
}

fn i16_at(h: &[u8], at: usize) -> i16 {
    i16::from_le_bytes(h[at..at + 2].try_into().unwrap())
}

#[test]
fn mask_is_written_on_the_source_grid() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("Case00.nii.gz");
    let mut raw = RawNifti::new(&[4, 3, 2, 1], 4, 16, pattern_bytes(|v| (v as i16).to_le_bytes().to_vec()));
    raw.sform = Some([[-0.5, 0.0, 0.0, 11.0], [0.0, 0.75, 0.0, -7.0], [0.0, 0.0, 3.0, 2.5]]);
    raw.qform = Some(([0.0, 0.0, 1.0], [11.0, -7.0, 2.5]));
    raw.write(&src_path);
    let source = read_volume(&src_path).unwrap();

    let mask: Vec<u8> = source.data.iter().map(|&v| (v >= 100.0) as u8).collect();
    let out = dir.path().join("Case00_mask.nii.gz");
    write_mask(&out, &mask, &source).unwrap();

    let h = raw_header(&out);
    assert_eq!(i16_at(&h, 40), 3, "dim[0]");
    assert_eq!([i16_at(&h, 42), i16_at(&h, 44), i16_at(&h, 46)], [4, 3, 2]);
    assert_eq!(i16_at(&h, 70), 2, "datatype uint8");
    assert_eq!([f32_at(&h, 80), f32_at(&h, 84), f32_at(&h, 88)], [0.5, 0.75, 3.0]);
    assert_eq!((i16_at(&h, 252), i16_at(&h, 254)), (1, 1), "qform and sform codes kept");
    assert_eq!([f32_at(&h, 280), f32_at(&h, 292), f32_at(&h, 300), f32_at(&h, 308)], [-0.5, 11.0, 0.75, -7.0]);
    let offset = f32_at(&h, 108) as usize;
    assert_eq!(&h[offset..], &mask[..], "voxels x fastest, same as the source");

    let back = read_volume(&out).unwrap();
    assert_eq!((back.dims, back.affine), (source.dims, source.affine));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn written_volumes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let affine = [[0.8, 0.0, 0.0, -50.0], [0.0, 0.8, 0.0, -40.0], [0.0, 0.0, 2.5, 10.0], [0.0, 0.0, 0.0, 1.0]];
    let header = new_header([0.8, 0.8, 2.5], &affine);
    let data: Vec<i16> = (0..24).map(|v| v * 37 - 300).collect();
    let path = dir.path().join("img.nii.gz");
    write_volume(&path, &data, DIMS, &header).unwrap();
    let vol = read_volume(&path).unwrap();
    assert_eq!(vol.data, data.iter().map(|&v| v as f32).collect::<Vec<_>>());
    // The header stores f32: 0.8 comes back as 0.800000011920929.
    for (got, want) in vol.affine.iter().flatten().zip(affine.iter().flatten()) {
        assert!((got - want).abs() < 1e-6, "{:?}", vol.affine);
    }
    let floats: Vec<f32> = (0..24).map(|v| v as f32 / 7.0).collect();
    let path = dir.path().join("prob.nii");
    write_volume(&path, &floats, DIMS, &header).unwrap();
    assert_eq!(read_volume(&path).unwrap().data, floats);
    // A wrong length is refused before anything is written.
    assert!(write_volume(&dir.path().join("bad.nii"), &floats[..5], DIMS, &header).is_err());
    assert!(!dir.path().join("bad.nii").exists());
}

#[test]
fn every_datatype_round_trips_through_the_writer() {
    fn round_trip<T: relkd_core::nifti_io::VoxelType + Copy + Into<f64>>(name: &str, data: Vec<T>, code: i16) {
        let dir = tempfile::tempdir().unwrap();
        let affine = [[0.5, 0.0, 0.0, 1.0], [0.0, 0.75, 0.0, 2.0], [0.0, 0.0, 3.0, 3.0], [0.0, 0.0, 0.0, 1.0]];
        let path = dir.path().join(format!("{name}.nii.gz"));
        write_volume(&path, &data, DIMS, &new_header([0.5, 0.75, 3.0], &affine)).unwrap();
        assert_eq!(i16_at(&raw_header(&path), 70), code, "{name} datatype code");
        let back = read_volume(&path).unwrap();
        let want: Vec<f32> = data.iter().map(|&v| v.into() as f32).collect();
        assert_eq!(back.data, want, "{name}");
        assert_eq!(back.dims, DIMS);
    }
    let n = DIMS.iter().product::<usize>();
    round_trip("uint8", (0..n).map(|v| (v * 10) as u8).collect(), 2);
    round_trip("int16", (0..n).map(|v| v as i16 * -300).collect(), 4);
    round_trip("uint16", (0..n).map(|v| v as u16 * 2700).collect(), 512);
    round_trip("int32", (0..n).map(|v| v as i32 * -70_000).collect(), 8);
    round_trip("float32", (0..n).map(|v| v as f32 / 3.0).collect(), 16);
    round_trip("float64", (0..n).map(|v| v as f64 * 0.125).collect(), 64);
}
