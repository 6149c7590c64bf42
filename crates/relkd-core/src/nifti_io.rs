//! NIfTI-1 volumes in and out.
//!
//! A [`Volume`] keeps the voxels in the file's own order (x fastest, then y, then z), so an axial
//! slice `z` is the contiguous run `data[z*nx*ny .. (z+1)*nx*ny]` with rows along y and columns
//! along x. The source header travels with the volume so that a mask is written back on exactly
//! the same grid (shape, pixdim, qform and sform).

use std::fs;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use nifti::{IntoNdArray, NiftiHeader, NiftiObject};

/// Everything that can go wrong reading or writing a volume; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: truncated or corrupt gzip stream ({detail})")]
    CorruptGzip { path: PathBuf, detail: String },
    #[error("{path}: file is shorter than its header says ({detail})")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path}: NIfTI-2 is not supported; convert it to NIfTI-1 (e.g. nibabel's Nifti1Image)")]
    Nifti2 { path: PathBuf },
    #[error("{path}: not a NIfTI-1 file ({detail})")]
    NotNifti { path: PathBuf, detail: String },
    #[error("{path}: unsupported datatype code {code} (supported: uint8, int16, uint16, int32, float32, float64)")]
    UnsupportedDatatype { path: PathBuf, code: i16 },
    #[error("{path}: expected a 3D volume, found dimensions {dims:?}")]
    NotThreeD { path: PathBuf, dims: Vec<u16> },
    #[error("{path}: {count} voxels are NaN or infinite (first at voxel x={}, y={}, z={})", first[0], first[1], first[2])]
    NonFinite { path: PathBuf, count: usize, first: [usize; 3] },
    #[error("{path}: data has {got} voxels but the grid {dims:?} needs {expected}")]
    ShapeMismatch { path: PathBuf, dims: [usize; 3], got: usize, expected: usize },
    #[error("{path}: {detail}")]
    Other { path: PathBuf, detail: String },
}

/// A 4×4 voxel-to-world matrix (row-major, millimetres).
pub type Affine = [[f64; 4]; 4];

/// A 3D scalar volume with its geometry.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Voxels as f32 after scl_slope/scl_inter, x fastest, then y, then z.
    pub data: Vec<f32>,
    /// `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel size in millimetres, `[dx, dy, dz]`.
    pub spacing: [f32; 3],
    /// Voxel-to-world transform: sform if set, else qform, else the pixdim scaling.
    pub affine: Affine,
    /// The source header, reused to write results on the same grid.
    pub header: NiftiHeader,
}

impl Volume {
    /// Number of voxels in one axial slice.
    pub fn slice_len(&self) -> usize {
        self.dims[0] * self.dims[1]
    }

    /// Axial slice `z`, row-major with `ny` rows of `nx` columns.
    pub fn slice(&self, z: usize) -> &[f32] {
        let n = self.slice_len();
        &self.data[z * n..(z + 1) * n]
    }

    /// Index of voxel (x, y, z) in [`Volume::data`].
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }
}

/// Reads a `.nii` or `.nii.gz` NIfTI-1 volume (uint8, int16, uint16, int32, float32, float64).
///
/// 4D volumes whose trailing dimensions are 1 read as 3D. NaN or infinite voxels are an error:
/// they would silently poison normalisation and every metric downstream.
pub fn read_volume(path: &Path) -> Result<Volume, NiftiError> {
    let bytes = read_decompressed(path)?;
    check_nifti1_magic(path, &bytes)?;
    // The header alone first: the voxel buffer is only allocated once the file is known to hold
    // every voxel the header claims, so a corrupt header cannot ask for gigabytes.
    let header = NiftiHeader::from_reader(Cursor::new(&bytes[..])).map_err(|e| nifti_error(path, e))?;
    let Some(voxel_size) = voxel_bytes(header.datatype) else {
        return Err(NiftiError::UnsupportedDatatype { path: path.into(), code: header.datatype });
    };
    if header.bitpix as usize != 8 * voxel_size {
        return Err(NiftiError::Other {
            path: path.into(),
            detail: format!(
                "bitpix {} does not match datatype {} ({} bits)",
                header.bitpix,
                datatype_name(header.datatype),
                8 * voxel_size
            ),
        });
    }
    let dims = spatial_dims(path, &header)?;
    let offset = (header.vox_offset.is_finite() && header.vox_offset >= 352.0).then_some(header.vox_offset as usize);
    let available = bytes.len().saturating_sub(offset.unwrap_or(352));
    let expected = dims.iter().try_fold(voxel_size, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX);
    if expected > available {
        return Err(NiftiError::Truncated {
            path: path.into(),
            detail: format!("{available} bytes of voxel data, {expected} expected"),
        });
    }
    let object = nifti::InMemNiftiObject::from_reader(Cursor::new(&bytes[..])).map_err(|e| nifti_error(path, e))?;
    let header = object.header().clone();

    let array = object.into_volume().into_ndarray::<f32>().map_err(|e| nifti_error(path, e))?;
    // The crate returns a column-major (Fortran) array, so memory order is already x fastest.
    let data = if array.t().is_standard_layout() {
        array.into_raw_vec_and_offset().0
    } else {
        array.t().iter().copied().collect()
    };
    let expected = dims.iter().product::<usize>();
    if data.len() != expected {
        return Err(NiftiError::ShapeMismatch { path: path.into(), dims, got: data.len(), expected });
    }
    check_finite(path, &data, dims)?;

    let spacing = [1, 2, 3].map(|i| {
        let d = header.pixdim[i].abs();
        if d > 0.0 && d.is_finite() { d } else { 1.0 }
    });
    let affine = header_affine(&header, spacing);
    Ok(Volume { data, dims, spacing, affine, header })
}

fn read_decompressed(path: &Path) -> Result<Vec<u8>, NiftiError> {
    let raw = fs::read(path).map_err(|source| NiftiError::Io { path: path.into(), source })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| NiftiError::CorruptGzip { path: path.into(), detail: e.to_string() })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn check_nifti1_magic(path: &Path, bytes: &[u8]) -> Result<(), NiftiError> {
    if bytes.len() < 348 {
        return Err(NiftiError::Truncated {
            path: path.into(),
            detail: format!("{} bytes, a NIfTI-1 header alone is 348", bytes.len()),
        });
    }
    let sizeof_hdr_le = i32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let sizeof_hdr_be = i32::from_be_bytes(bytes[0..4].try_into().unwrap());
    if sizeof_hdr_le == 540 || sizeof_hdr_be == 540 {
        return Err(NiftiError::Nifti2 { path: path.into() });
    }
    if sizeof_hdr_le != 348 && sizeof_hdr_be != 348 {
        return Err(NiftiError::NotNifti {
            path: path.into(),
            detail: format!("header size field is {sizeof_hdr_le}, expected 348"),
        });
    }
    Ok(())
}

fn nifti_error(path: &Path, e: nifti::NiftiError) -> NiftiError {
    match e {
        nifti::NiftiError::IncompatibleLength(got, expected) => NiftiError::Truncated {
            path: path.into(),
            detail: format!("{got} bytes of voxel data, {expected} expected"),
        },
        nifti::NiftiError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            NiftiError::Truncated { path: path.into(), detail: io.to_string() }
        }
        nifti::NiftiError::InvalidFormat => NiftiError::NotNifti { path: path.into(), detail: "bad magic code".into() },
        other => NiftiError::Other { path: path.into(), detail: other.to_string() },
    }
}

/// `[nx, ny, nz]` from `dim`, squeezing trailing dimensions of size 1 (4D with t = 1 is 3D).
fn spatial_dims(path: &Path, header: &NiftiHeader) -> Result<[usize; 3], NiftiError> {
    let ndim = (header.dim[0] as usize).clamp(0, 7);
    let mut dims: Vec<u16> = header.dim[1..=ndim].to_vec();
    while dims.len() > 3 && dims.last() == Some(&1) {
        dims.pop();
    }
    if dims.len() != 3 {
        return Err(NiftiError::NotThreeD { path: path.into(), dims: header.dim[1..=ndim].to_vec() });
    }
    Ok([dims[0] as usize, dims[1] as usize, dims[2] as usize])
}

fn check_finite(path: &Path, data: &[f32], dims: [usize; 3]) -> Result<(), NiftiError> {
    let count = data.iter().filter(|v| !v.is_finite()).count();
    if count == 0 {
        return Ok(());
    }
    let i = data.iter().position(|v| !v.is_finite()).unwrap();
    let first = [i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1])];
    Err(NiftiError::NonFinite { path: path.into(), count, first })
}

/// The voxel-to-world matrix as the NIfTI-1 standard defines it: method 3 (sform) when
/// `sform_code > 0`, else method 2 (qform quaternion), else method 1 (pixdim scaling only).
pub fn header_affine(header: &NiftiHeader, spacing: [f32; 3]) -> Affine {
    if header.sform_code > 0 {
        let rows = [header.srow_x, header.srow_y, header.srow_z];
        let mut a = identity();
        for (r, row) in rows.iter().enumerate() {
            for c in 0..4 {
                a[r][c] = row[c] as f64;
            }
        }
        return a;
    }
    let [dx, dy, dz] = spacing.map(f64::from);
    if header.qform_code > 0 {
        let (b, c, d) = (header.quatern_b as f64, header.quatern_c as f64, header.quatern_d as f64);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let qfac = if header.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ];
        let offset = [header.quatern_x, header.quatern_y, header.quatern_z].map(f64::from);
        let mut m = identity();
        for i in 0..3 {
            m[i][0] = r[i][0] * dx;
            m[i][1] = r[i][1] * dy;
            m[i][2] = r[i][2] * dz * qfac;
            m[i][3] = offset[i];
        }
        return m;
    }
    let mut m = identity();
    m[0][0] = dx;
    m[1][1] = dy;
    m[2][2] = dz;
    m
}

fn identity() -> Affine {
    let mut m = [[0.0; 4]; 4];
    for (i, row) in m.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    m
}

/// A header for a new volume with the given spacing and affine (sform and qform both set,
/// code 1 = scanner anatomical). Used by the phantom writer, whose affines are axis-aligned
/// with any signs (radiological storage flips x and y): the qform encodes the same axes.
pub fn new_header(spacing: [f32; 3], affine: &Affine) -> NiftiHeader {
    let sign = |d: usize| if affine[d][d] < 0.0 { -1.0f32 } else { 1.0 };
    // A negative determinant goes into qfac (the third axis); what is left is a rotation by
    // 180° about one axis or none, whose quaternion (b, c, d) is that axis.
    let qfac = sign(0) * sign(1) * sign(2);
    let rotation = [sign(0), sign(1), sign(2) * qfac];
    let quaternion = match rotation {
        [-1.0, -1.0, _] => [0.0, 0.0, 1.0],
        [-1.0, _, -1.0] => [0.0, 1.0, 0.0],
        [_, -1.0, -1.0] => [1.0, 0.0, 0.0],
        _ => [0.0, 0.0, 0.0],
    };
    NiftiHeader {
        pixdim: [qfac, spacing[0], spacing[1], spacing[2], 1.0, 1.0, 1.0, 1.0],
        sform_code: 1,
        srow_x: affine[0].map(|v| v as f32),
        srow_y: affine[1].map(|v| v as f32),
        srow_z: affine[2].map(|v| v as f32),
        qform_code: 1,
        quatern_b: quaternion[0],
        quatern_c: quaternion[1],
        quatern_d: quaternion[2],
        quatern_x: affine[0][3] as f32,
        quatern_y: affine[1][3] as f32,
        quatern_z: affine[2][3] as f32,
        xyzt_units: 2, // millimetres
        ..NiftiHeader::default()
    }
}

/// Voxel types this crate writes.
pub trait VoxelType: nifti::DataElement + bytemuck::Pod {}
impl VoxelType for u8 {}
impl VoxelType for i16 {}
impl VoxelType for u16 {}
impl VoxelType for i32 {}
impl VoxelType for f32 {}
impl VoxelType for f64 {}

/// Writes `data` (x fastest, like [`Volume::data`]) on the grid of `reference`, atomically:
/// a temporary file in the same folder is renamed over `path` once complete.
/// Compression follows the extension (`.nii.gz` compressed, `.nii` not).
pub fn write_volume<T: VoxelType>(
    path: &Path,
    data: &[T],
    dims: [usize; 3],
    reference: &NiftiHeader,
) -> Result<(), NiftiError> {
    let expected = dims.iter().product::<usize>();
    if data.len() != expected {
        return Err(NiftiError::ShapeMismatch { path: path.into(), dims, got: data.len(), expected });
    }
    let mut header = reference.clone();
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    header.cal_min = 0.0;
    header.cal_max = 0.0;
    // Column-major view of x-fastest data is the logical [x, y, z] array the writer expects.
    let array = ndarray::ArrayView3::from_shape(ndarray::ShapeBuilder::f(dims), data).expect("length checked above");

    // The nifti writer rewrites everything after the first dot of a name, so the temporary
    // file gets a dot-free stem (the marker and the target's stem) with the target's extension:
    // `.relkd-partial-PID-N-case_mask.nii.gz`, which a later write recognises if left behind.
    let gz = path.to_string_lossy().ends_with(".gz");
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let stem = stem.strip_suffix(".nii").unwrap_or(stem).replace('.', "_");
    let extension = if gz { "nii.gz" } else { "nii" };
    crate::files::remove_stale_partials(&path.with_file_name(format!("{stem}.{extension}")));
    let tmp = crate::files::Pending::claim(
        path.with_file_name(format!("{}-{stem}.{extension}", crate::files::partial_stem())),
    );
    // Fast deflate: masks are mostly zeros and compress well at any level, and writing stays
    // a small part of `infer`'s time.
    let options = nifti::writer::WriterOptions::new(&tmp).reference_header(&header);
    let options = if gz { options.compression_level(flate2::Compression::fast()) } else { options };
    options
        .write_nifti(&array)
        .map_err(|e| match e {
            nifti::NiftiError::Io(source) => NiftiError::Io { path: path.into(), source },
            other => NiftiError::Other { path: path.into(), detail: other.to_string() },
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(|source| NiftiError::Io { path: path.into(), source }))
}

/// Writes a binary mask as uint8 on the grid of `source` (same shape, pixdim, qform and sform).
pub fn write_mask(path: &Path, mask: &[u8], source: &Volume) -> Result<(), NiftiError> {
    write_volume(path, mask, source.dims, &source.header)
}

/// Bytes per voxel of the datatypes read (those [`datatype_name`] names).
fn voxel_bytes(code: i16) -> Option<usize> {
    match code {
        2 => Some(1),
        4 | 512 => Some(2),
        8 | 16 => Some(4),
        64 => Some(8),
        _ => None,
    }
}

/// The datatype code name, for summaries.
pub fn datatype_name(code: i16) -> &'static str {
    match code {
        2 => "uint8",
        4 => "int16",
        8 => "int32",
        16 => "float32",
        64 => "float64",
        512 => "uint16",
        _ => "other",
    }
}
