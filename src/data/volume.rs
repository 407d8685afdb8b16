//! Reading one NIfTI volume, with the checks that catch broken BraTS files early.

use std::io::ErrorKind;
use std::path::Path;

use nifti::{IntoNdArray, NiftiError, NiftiObject, NiftiVolume, ReaderOptions};

use super::DataError;

/// A 3D volume. `data` is laid out `[z][y][x]` (x fastest), which is NIfTI's on-disk order.
#[derive(Debug, Clone)]
pub struct Volume {
    /// (x, y, z) sizes.
    pub dims: [usize; 3],
    /// Voxel size in mm (x, y, z).
    pub pixdim: [f32; 3],
    pub data: Vec<f32>,
}

impl Volume {
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        (z * self.dims[1] + y) * self.dims[0] + x
    }
    pub fn slice_len(&self) -> usize {
        self.dims[0] * self.dims[1]
    }
}

fn describe(e: NiftiError) -> String {
    match e {
        NiftiError::Io(io) if io.kind() == ErrorKind::UnexpectedEof => {
            "truncated file: the data ends before the volume does".into()
        }
        NiftiError::Io(io) if io.kind() == ErrorKind::NotFound => "file not found".into(),
        NiftiError::Io(io)
            if io.kind() == ErrorKind::InvalidInput || io.kind() == ErrorKind::InvalidData =>
        {
            format!("corrupt compressed data ({io})")
        }
        NiftiError::Io(io) => format!("cannot read: {io}"),
        NiftiError::InvalidFormat => "not a NIfTI file (bad magic code)".into(),
        NiftiError::IncompatibleLength(got, want) => {
            format!("truncated or padded volume: {got} bytes of data, {want} expected")
        }
        other => format!("cannot read NIfTI: {other}"),
    }
}

/// Reads a volume as f32 (scl_slope / scl_inter applied). `patient` names the case in errors.
pub fn read_volume(patient: &str, path: &Path) -> Result<Volume, DataError> {
    let err = |msg: String| DataError::file(patient, path, msg);
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| err(describe(e)))?;
    let header = obj.header().clone();
    let volume = obj.into_volume();
    let dim = volume.dim().to_vec();
    // A 3D volume, possibly written with trailing singleton dimensions (x, y, z, 1).
    if dim.len() < 3 || dim[3..].iter().any(|&d| d != 1) || dim[..3].contains(&0) {
        return Err(err(format!(
            "expected a 3D volume, found dimensions {dim:?}"
        )));
    }
    let dims = [dim[0] as usize, dim[1] as usize, dim[2] as usize];
    let array = volume.into_ndarray::<f32>().map_err(|e| err(describe(e)))?;
    // nifti returns Fortran order: the memory order is [z][y][x], which is what we want.
    let data = match array.as_slice_memory_order() {
        Some(s) => s.to_vec(),
        None => return Err(err("unexpected memory layout".into())),
    };
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        let (x, y, z) = (
            i % dims[0],
            (i / dims[0]) % dims[1],
            i / (dims[0] * dims[1]),
        );
        return Err(err(format!(
            "non-finite voxel value {} at (x={x}, y={y}, z={z})",
            data[i]
        )));
    }
    let p = header.pixdim;
    let pixdim = [p[1].abs(), p[2].abs(), p[3].abs()].map(|v| if v > 0.0 { v } else { 1.0 });
    Ok(Volume { dims, pixdim, data })
}

/// Reads a BraTS segmentation and checks its labels are in {0, 1, 2, 4}.
/// The returned volume's `data` is emptied: the labels are the payload.
pub fn read_seg(patient: &str, path: &Path) -> Result<(Volume, Vec<u8>), DataError> {
    let mut vol = read_volume(patient, path)?;
    let mut labels = Vec::with_capacity(vol.data.len());
    for (i, &v) in vol.data.iter().enumerate() {
        let l = v.round();
        if (l - v).abs() > 1e-3 || !matches!(l as i32, 0 | 1 | 2 | 4) {
            let d = vol.dims;
            let (x, y, z) = (i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1]));
            return Err(DataError::file(
                patient,
                path,
                format!(
                    "segmentation label {v} at (x={x}, y={y}, z={z}); BraTS labels are 0, 1, 2, 4"
                ),
            ));
        }
        labels.push(l as u8);
    }
    vol.data = Vec::new();
    Ok((vol, labels))
}

/// The (x, y, z) dimensions and voxel size from a file's header alone (cheap: no volume decode).
pub fn read_dims(patient: &str, path: &Path) -> Result<([usize; 3], [f32; 3]), DataError> {
    let h = nifti::NiftiHeader::from_file(path)
        .map_err(|e| DataError::file(patient, path, describe(e)))?;
    let n = h.dim[0] as usize;
    let dim: Vec<usize> = h.dim[1..=n.min(7)].iter().map(|&d| d as usize).collect();
    if dim.len() < 3 || dim[3..].iter().any(|&d| d != 1) || dim[..3].contains(&0) {
        return Err(DataError::file(
            patient,
            path,
            format!("expected a 3D volume, found dimensions {dim:?}"),
        ));
    }
    let p = h.pixdim;
    let pixdim = [p[1].abs(), p[2].abs(), p[3].abs()].map(|v| if v > 0.0 { v } else { 1.0 });
    Ok(([dim[0], dim[1], dim[2]], pixdim))
}
