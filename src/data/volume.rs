//! Reading one NIfTI volume (3D, or 4D with channels), with the checks that catch broken files
//! early, and segmentations in each layout's labels.

use std::io::{ErrorKind, Read};
use std::path::Path;

use nifti::{Endianness, NiftiError, NiftiHeader, NiftiType};

use super::{DataError, LayoutKind};

/// A 3D volume. `data` is laid out `[z][y][x]` (x fastest), which is NIfTI's on-disk order.
#[derive(Debug, Clone, Default)]
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

/// Bytes per voxel of the scalar types `to_f32` converts; `None` for the others.
fn voxel_bytes(t: NiftiType) -> Option<usize> {
    match t {
        NiftiType::Uint8 | NiftiType::Int8 => Some(1),
        NiftiType::Int16 | NiftiType::Uint16 => Some(2),
        NiftiType::Int32 | NiftiType::Uint32 | NiftiType::Float32 => Some(4),
        NiftiType::Int64 | NiftiType::Uint64 | NiftiType::Float64 => Some(8),
        _ => None,
    }
}

/// The most a deflate stream can expand (its format's limit is about 1032:1): a gzipped file
/// whose header claims more voxel bytes than this times its size is lying about its size.
const MAX_INFLATE_RATIO: usize = 1032;

/// The most voxels (all channels) any read takes from one file: 2^27, a 512×512×512 volume, 3.7
/// times a Decathlon case's four channels of 240×240×155. A header that asks for more is
/// refused before anything is allocated.
pub const MAX_VOXELS: usize = 1 << 27;

/// The most bytes of header extensions (between the 348-byte header and the voxels) a read
/// skips.
const MAX_EXTENSION_BYTES: u64 = 16 << 20;

/// What a read expects of a file, checked against its header before anything is allocated or
/// inflated from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    /// The (x, y, z) shape, when another file has set it (the case's images, for its
    /// segmentation; the planned shape, for a data set's files).
    pub dims: Option<[usize; 3]>,
}

impl Expect {
    /// Any shape within [`MAX_VOXELS`].
    pub const ANY: Expect = Expect { dims: None };

    /// The (x, y, z) shape `dims`.
    pub fn dims(dims: [usize; 3]) -> Expect {
        Expect { dims: Some(dims) }
    }
}

/// An open NIfTI file: its header read, the reader at the first byte after it.
struct Opened {
    header: NiftiHeader,
    /// The file's size on disk.
    len: u64,
    gz: bool,
    reader: Box<dyn Read>,
}

/// Opens `path` for reading if it is a regular file: a FIFO or a device is refused by its type,
/// checked on the open file (opened without blocking, so a FIFO cannot hang the open).
fn open_regular(path: &Path) -> Result<(std::fs::File, u64), String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io = |e: std::io::Error| describe(e.into());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        let kind = meta.file_type();
        let what = if kind.is_fifo() {
            "a named pipe (FIFO)"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a folder"
        } else {
            "not a regular file"
        };
        return Err(format!("{what}, not a NIfTI file: refused"));
    }
    Ok((file, meta.len()))
}

/// The most bytes a NIfTI file of `expect`'s shape can take on disk: any voxel type (at most 8
/// bytes), the most extensions, and a gzip's overhead.
fn most_file_bytes(expect: Expect) -> u64 {
    let voxels = expect
        .dims
        .map_or(MAX_VOXELS, |d| d.iter().product::<usize>().min(MAX_VOXELS))
        as u64;
    let whole = 348 + MAX_EXTENSION_BYTES + 8 * voxels;
    whole + whole / 1000 + (64 << 10)
}

/// A NIfTI file's bytes as they are on disk, for a copy that is checked and kept: only a
/// regular file, and no more bytes than a file of `expect`'s shape can take (its size is
/// checked before reading, and the read stops there), so a file offered as a segmentation
/// cannot make the reader hold more than a small multiple of its image's voxels.
pub fn read_file_bytes(patient: &str, path: &Path, expect: Expect) -> Result<Vec<u8>, DataError> {
    let err = |msg: String| DataError::file(patient, path, msg);
    let (file, len) = open_regular(path).map_err(err)?;
    let most = most_file_bytes(expect);
    let too_big = |n: u64| {
        err(format!(
            "{n} bytes, more than a NIfTI file of shape {:?} can take ({most})",
            expect.dims.unwrap_or_default()
        ))
    };
    if len > most {
        return Err(too_big(len));
    }
    let mut bytes = Vec::new();
    file.take(most + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(describe(e.into())))?;
    if bytes.len() as u64 > most {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Opens `path` (a regular file only, [`open_regular`]) and reads its header.
fn open_nifti(path: &Path) -> Result<Opened, String> {
    let (file, len) = open_regular(path)?;
    let gz = is_gz(path);
    let buffered = std::io::BufReader::with_capacity(1 << 16, file);
    let mut reader: Box<dyn Read> = if gz {
        // Several gzip members one after the other are one valid file (as gzip -d reads it).
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let header = NiftiHeader::from_reader(&mut reader).map_err(describe)?;
    Ok(Opened {
        header,
        len,
        gz,
        reader,
    })
}

/// Checks what a header says before anything is allocated from it: its voxel type and
/// `bitpix` agree; its shape is a volume (of channels), the one `expect`ed, of at most
/// [`MAX_VOXELS`]; and the file's size fits it: a `.nii` holds exactly the header, its
/// extensions and the voxels, and a `.nii.gz` is neither smaller than deflate allows (a
/// damaged header could ask for terabytes) nor larger than any gzip of those bytes. Returns
/// the voxels' byte count.
fn check_header(h: &NiftiHeader, file_len: u64, gz: bool, expect: Expect) -> Result<usize, String> {
    let kind = h
        .data_type()
        .map_err(|e| format!("cannot read NIfTI: {e}"))?;
    let size = voxel_bytes(kind).ok_or_else(|| format!("unsupported voxel type {kind:?}"))?;
    if h.bitpix as usize != 8 * size {
        return Err(format!(
            "damaged header: bitpix {} disagrees with the voxel type {kind:?} ({} bits)",
            h.bitpix,
            8 * size
        ));
    }
    let dim: Vec<usize> = h
        .dim()
        .map_err(describe)?
        .iter()
        .map(|&d| d as usize)
        .collect();
    let (dims, channels) = spatial_dims(&dim)?;
    if let Some(want) = expect.dims {
        if dims != want {
            return Err(format!("shape {dims:?}, but {want:?} is expected"));
        }
    }
    let voxels = dims
        .iter()
        .try_fold(channels, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_VOXELS)
        .ok_or_else(|| {
            format!(
                "damaged header: dimensions {dim:?} ask for more than {MAX_VOXELS} voxels, the most a file may hold"
            )
        })?;
    let n = voxels * size;
    let extensions = (h.vox_offset as u64).saturating_sub(348);
    if extensions > MAX_EXTENSION_BYTES {
        return Err(format!(
            "damaged header: vox_offset {} puts the voxels {extensions} bytes after the header (at most {MAX_EXTENSION_BYTES})",
            h.vox_offset
        ));
    }
    let whole = 348 + extensions + n as u64;
    if gz {
        if (file_len as u128) * (MAX_INFLATE_RATIO as u128) < n as u128 {
            return Err(format!(
                "damaged header: dimensions {dim:?} need {n} bytes of voxels, more than {file_len} \
                 compressed bytes can hold"
            ));
        }
        // Stored deflate blocks add 5 bytes per 64 KiB; gzip's own header and trailer, a few.
        let most = whole + whole / 1000 + (64 << 10);
        if file_len > most {
            return Err(format!(
                "{file_len} bytes, more than any gzip of the {whole} bytes its header describes ({most}): data after the volume is refused"
            ));
        }
    } else if file_len < whole {
        return Err(describe(NiftiError::Io(ErrorKind::UnexpectedEof.into())));
    } else if file_len > whole {
        return Err(format!(
            "{file_len} bytes, but its header describes {whole}: data after the volume is refused"
        ));
    }
    Ok(n)
}

fn is_gz(path: &Path) -> bool {
    path.to_string_lossy().ends_with(".gz")
}

/// Decodes a NIfTI-1 file in one pass: the header read and checked against `expect` and the
/// file's size (`check_header`), the voxels inflated straight into one buffer, and nothing may
/// follow them (reading to the end of the stream also checks the gzip CRC).
fn decode(path: &Path, expect: Expect) -> Result<(NiftiHeader, Vec<u8>), String> {
    let io = |e: std::io::Error| describe(e.into());
    let Opened {
        header,
        len,
        gz,
        mut reader,
    } = open_nifti(path)?;
    let n = check_header(&header, len, gz, expect)?;
    // Extensions, if any, sit between the 348-byte header and the voxels.
    let skip = (header.vox_offset as u64).saturating_sub(348);
    std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink()).map_err(io)?;
    // A plain file's size proves its voxels are there; a gzip's does not (a header may promise
    // far more than the stream holds), so its buffer grows with what it inflates to.
    let first = if gz { n.min(len as usize * 16) } else { n };
    let raw = read_voxels(&mut reader, n, first)?;
    let mut after = [0u8; 1];
    match reader.read(&mut after) {
        Ok(0) => Ok((header, raw)),
        Ok(_) => Err(format!(
            "data after the {n} bytes of voxels its header describes: refused"
        )),
        Err(e) => Err(io(e)),
    }
}

/// Reads exactly `n` bytes into a buffer that starts at `first` bytes and doubles as it fills
/// (at most `n`): a stream that ends early has cost only what it held. An allocation that fails
/// is an error, not an abort.
fn read_voxels(reader: &mut dyn Read, n: usize, first: usize) -> Result<Vec<u8>, String> {
    let mut raw: Vec<u8> = Vec::new();
    let mut size = first.clamp(1, n.max(1));
    while raw.len() < n {
        let start = raw.len();
        raw.try_reserve_exact(size - start)
            .map_err(|_| format!("cannot allocate {size} bytes for the volume"))?;
        raw.resize(size, 0);
        reader
            .read_exact(&mut raw[start..])
            .map_err(|e| describe(e.into()))?;
        size = (size * 2).min(n);
    }
    Ok(raw)
}

/// Converts raw voxels of any NIfTI scalar type to f32, applying scl_slope / scl_inter.
fn to_f32(h: &NiftiHeader, raw: &[u8]) -> Result<Vec<f32>, String> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            let little = h.endianness == Endianness::Little;
            raw.chunks_exact($n)
                .map(|c| {
                    let b: [u8; $n] = c.try_into().unwrap();
                    (if little {
                        <$t>::from_le_bytes(b)
                    } else {
                        <$t>::from_be_bytes(b)
                    }) as f32
                })
                .collect::<Vec<f32>>()
        }};
    }
    let mut v = match h.data_type().map_err(|e| e.to_string())? {
        NiftiType::Uint8 => raw.iter().map(|&b| b as f32).collect(),
        NiftiType::Int8 => raw.iter().map(|&b| b as i8 as f32).collect(),
        NiftiType::Int16 => conv!(i16, 2),
        NiftiType::Uint16 => conv!(u16, 2),
        NiftiType::Int32 => conv!(i32, 4),
        NiftiType::Uint32 => conv!(u32, 4),
        NiftiType::Int64 => conv!(i64, 8),
        NiftiType::Uint64 => conv!(u64, 8),
        NiftiType::Float32 => conv!(f32, 4),
        NiftiType::Float64 => conv!(f64, 8),
        other => return Err(format!("unsupported voxel type {other:?}")),
    };
    let (slope, inter) = (h.scl_slope, h.scl_inter);
    if slope != 0.0 && slope.is_finite() && inter.is_finite() && (slope != 1.0 || inter != 0.0) {
        v.iter_mut().for_each(|x| *x = *x * slope + inter);
    }
    Ok(v)
}

/// A header's (x, y, z) sizes and channel count: a 3D volume, possibly written with trailing
/// singleton dimensions (x, y, z, 1), or a 4D one whose fourth dimension holds the channels (the
/// Decathlon's images).
fn spatial_dims(dim: &[usize]) -> Result<([usize; 3], usize), String> {
    if dim.len() < 3 || dim.len() > 4 && dim[4..].iter().any(|&d| d != 1) || dim.contains(&0) {
        return Err(format!(
            "expected a 3D volume or a 4D one of channels, found dimensions {dim:?}"
        ));
    }
    Ok(([dim[0], dim[1], dim[2]], dim.get(3).copied().unwrap_or(1)))
}

/// Reads a volume as f32 (scl_slope / scl_inter applied): one `Volume` per channel, so one for a
/// 3D file and one per entry of the fourth dimension for a 4D file. `patient` names the case in
/// errors; `expect` is checked before the voxels are read.
pub fn read_channels(patient: &str, path: &Path, expect: Expect) -> Result<Vec<Volume>, DataError> {
    let err = |msg: String| DataError::file(patient, path, msg);
    let (header, raw) = decode(path, expect).map_err(err)?;
    let dim: Vec<usize> = header
        .dim()
        .map_err(|e| err(describe(e)))?
        .iter()
        .map(|&d| d as usize)
        .collect();
    let (dims, channels) = spatial_dims(&dim).map_err(err)?;
    // NIfTI stores x fastest, then y, then z, then the channel: each channel is one [z][y][x]
    // block.
    let data = to_f32(&header, &raw).map_err(err)?;
    drop(raw);
    let float = matches!(
        header.data_type(),
        Ok(NiftiType::Float32 | NiftiType::Float64)
    );
    // Only float files can hold NaN or Inf.
    let bad = if float {
        data.iter().position(|v| !v.is_finite())
    } else {
        None
    };
    let n = dims.iter().product::<usize>();
    if let Some(i) = bad {
        let (x, y, z) = (
            i % dims[0],
            (i / dims[0]) % dims[1],
            (i / (dims[0] * dims[1])) % dims[2],
        );
        let at_channel = if channels > 1 {
            format!(", channel {}", i / n)
        } else {
            String::new()
        };
        return Err(err(format!(
            "non-finite voxel value {} at (x={x}, y={y}, z={z}){at_channel}",
            data[i]
        )));
    }
    let p = header.pixdim;
    let pixdim = [p[1].abs(), p[2].abs(), p[3].abs()].map(|v| if v > 0.0 { v } else { 1.0 });
    if channels == 1 {
        return Ok(vec![Volume { dims, pixdim, data }]);
    }
    Ok(data
        .chunks_exact(n)
        .map(|c| Volume {
            dims,
            pixdim,
            data: c.to_vec(),
        })
        .collect())
}

/// Reads a 3D volume as f32 (scl_slope / scl_inter applied). `patient` names the case in errors.
pub fn read_volume(patient: &str, path: &Path, expect: Expect) -> Result<Volume, DataError> {
    let mut volumes = read_channels(patient, path, expect)?;
    if volumes.len() != 1 {
        return Err(DataError::file(
            patient,
            path,
            format!("expected a 3D volume, found {} channels", volumes.len()),
        ));
    }
    Ok(volumes.remove(0))
}

/// Reads a label volume as whole numbers from 0 to 255 (float files may carry rounding noise).
/// The returned volume's `data` is emptied: the labels are the payload.
pub fn read_labels(
    patient: &str,
    path: &Path,
    expect: Expect,
) -> Result<(Volume, Vec<u8>), DataError> {
    let mut vol = read_volume(patient, path, expect)?;
    let mut labels = Vec::with_capacity(vol.data.len());
    for (i, &v) in vol.data.iter().enumerate() {
        let l = v.round();
        if (l - v).abs() > 1e-3 || !(0.0..=255.0).contains(&l) {
            let d = vol.dims;
            let (x, y, z) = (i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1]));
            return Err(DataError::file(
                patient,
                path,
                format!("segmentation value {v} at (x={x}, y={y}, z={z}) is not a label"),
            ));
        }
        labels.push(l as u8);
    }
    vol.data = Vec::new();
    Ok((vol, labels))
}

/// Reads a segmentation of a `kind` layout, checks its labels are that layout's, and returns
/// them as BraTS 2019 values (1 core, 2 edema, 4 enhancing; see `LayoutKind::canonical_label`).
pub fn read_seg(
    patient: &str,
    path: &Path,
    kind: LayoutKind,
    expect: Expect,
) -> Result<(Volume, Vec<u8>), DataError> {
    let (vol, mut labels) = read_labels(patient, path, expect)?;
    let mut table = [None; 256];
    for (l, slot) in table.iter_mut().enumerate() {
        *slot = kind.canonical_label(l as u8);
    }
    for (i, l) in labels.iter_mut().enumerate() {
        match table[*l as usize] {
            Some(c) => *l = c,
            None => {
                let d = vol.dims;
                let (x, y, z) = (i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1]));
                return Err(DataError::file(
                    patient,
                    path,
                    format!(
                        "segmentation label {l} at (x={x}, y={y}, z={z}); {} labels are {}",
                        kind.describe(),
                        kind.label_values()
                    ),
                ));
            }
        }
    }
    Ok((vol, labels))
}

/// How far two files' voxel-to-world transforms may be apart and still be one space (mm, per
/// entry): float32 rounding, far below any voxel.
pub const AFFINE_TOLERANCE: f64 = 1e-3;

/// Voxel (i, j, k) to world (x, y, z) in mm, as rows `[a, b, c, offset]`.
pub type Affine = [[f64; 4]; 3];

/// The voxel-to-world transform of a NIfTI file from its header: the sform when set, else the
/// qform (its quaternion, offsets and qfac), else the voxel sizes alone (NIfTI's three methods,
/// in the order the standard prefers them). A transform with a value that is not finite is
/// refused.
pub fn read_affine(patient: &str, path: &Path) -> Result<Affine, DataError> {
    let err = |msg: String| DataError::file(patient, path, msg);
    let o = open_nifti(path).map_err(err)?;
    let affine = header_affine(&o.header);
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(err(format!(
            "damaged header: its voxel-to-world transform holds a value that is not finite ({affine:?})"
        )));
    }
    Ok(affine)
}

/// The voxel-to-world transform a file records (its sform or qform), `None` when it records
/// neither (its voxel sizes alone place it). Not finite: refused, as by [`read_affine`].
pub fn read_recorded_affine(patient: &str, path: &Path) -> Result<Option<Affine>, DataError> {
    let err = |msg: String| DataError::file(patient, path, msg);
    let h = open_nifti(path).map_err(err)?.header;
    if h.sform_code <= 0 && h.qform_code <= 0 {
        return Ok(None);
    }
    read_affine(patient, path).map(Some)
}

/// The largest difference between two transforms' entries (mm).
pub fn affine_difference(a: &Affine, b: &Affine) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn header_affine(h: &NiftiHeader) -> Affine {
    let f = |row: [f32; 4]| row.map(f64::from);
    if h.sform_code > 0 {
        return [f(h.srow_x), f(h.srow_y), f(h.srow_z)];
    }
    let (dx, dy, dz) = (h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64);
    if h.qform_code > 0 {
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let o = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
        let mut m = [[0.0; 4]; 3];
        for i in 0..3 {
            m[i] = [r[i][0] * dx, r[i][1] * dy, r[i][2] * dz * qfac, o[i]];
        }
        return m;
    }
    [
        [dx, 0.0, 0.0, 0.0],
        [0.0, dy, 0.0, 0.0],
        [0.0, 0.0, dz, 0.0],
    ]
}

/// The (x, y, z) dimensions, voxel size and channel count from a file's header alone (cheap:
/// no volume decode).
pub fn read_dims(patient: &str, path: &Path) -> Result<([usize; 3], [f32; 3], usize), DataError> {
    let err = |msg: String| DataError::file(patient, path, msg);
    // The same checks as a decode, so that a damaged header is refused before the data set's
    // geometry is planned from it.
    let Opened {
        header: h, len, gz, ..
    } = open_nifti(path).map_err(err)?;
    check_header(&h, len, gz, Expect::ANY).map_err(err)?;
    let n = h.dim[0] as usize;
    let dim: Vec<usize> = h.dim[1..=n.clamp(1, 7)]
        .iter()
        .map(|&d| d as usize)
        .collect();
    let (dims, channels) = spatial_dims(&dim).map_err(err)?;
    let p = h.pixdim;
    let pixdim = [p[1].abs(), p[2].abs(), p[3].abs()].map(|v| if v > 0.0 { v } else { 1.0 });
    Ok((dims, pixdim, channels))
}
