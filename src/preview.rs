//! `suggestive preview`: one axial slice of a volume as an image, with the tumour outline, printed
//! inline by viuer (kitty / iTerm2 / sixel where the terminal has them, half-blocks otherwise).

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};

use crate::data::{find_case, read_channels, read_labels, read_volume, Expect, Modality, Volume};

/// A volume to preview and its segmentation, when one was found.
pub struct PreviewSource {
    pub name: String,
    pub image: Volume,
    pub labels: Option<Vec<u8>>,
}

/// `target` is a case folder (BraTS 2019-2021 or 2023), a Decathlon image
/// (`imagesTr/<ID>.nii.gz`: the modality's channel, its label from `labelsTr/`), or a volume
/// file, whose segmentation is `<ID>_seg.nii[.gz]` beside it.
pub fn load(target: &Path, modality: Modality) -> Result<PreviewSource> {
    // `.` or `..` name no folder: the canonical path does.
    let canonical = target.canonicalize();
    let target = canonical.as_deref().unwrap_or(target);
    if let Some(case) = find_case(target)? {
        let file = case.images.get(&modality).with_context(|| {
            format!(
                "{}: {} ({modality}) of case {}",
                case.expected_path(Some(modality)).display(),
                case.missing_message(Some(modality)),
                case.id
            )
        })?;
        let mut channels = read_channels(&case.id, &file.path, Expect::ANY)?;
        let Some(at) = Some(file.channel.unwrap_or(0)).filter(|&c| c < channels.len()) else {
            bail!(
                "{}: has {} channels, no channel {} ({modality})",
                file.path.display(),
                channels.len(),
                file.channel.unwrap_or(0)
            );
        };
        let image = channels.swap_remove(at);
        let labels = case
            .seg
            .as_deref()
            .map(|p| outline_labels(&case.id, p, &image))
            .transpose()?;
        let name = match file.channel {
            Some(_) => format!(
                "{} ({modality})",
                file.path.file_name().unwrap_or_default().to_string_lossy()
            ),
            None => file
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        };
        return Ok(PreviewSource {
            name,
            image,
            labels,
        });
    }
    // A folder with case files was found above; any other folder holds nothing to preview.
    let (image_path, seg_path, id) = if target.is_dir() {
        bail!(
            "{}: no case files (<ID>_{}.nii[.gz] or <ID>-{}.nii.gz) in this folder",
            target.display(),
            modality.suffix(),
            modality.suffix_2023()
        );
    } else if target.is_file() {
        let name = target
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
        // `<ID>_<modality>` (BraTS 2019-2021) or `<ID>-<modality>` (2023), the
        // segmentation beside it with the same separator.
        let (id, seg) = match stem.rfind(['_', '-']) {
            Some(at) => {
                let (id, sep) = (&stem[..at], &stem[at..at + 1]);
                let seg = ["nii.gz", "nii"]
                    .iter()
                    .map(|ext| target.with_file_name(format!("{id}{sep}seg.{ext}")))
                    .find(|p| p.is_file() && p != target);
                (id.to_string(), seg)
            }
            None => (stem.to_string(), None),
        };
        (target.to_path_buf(), seg, id)
    } else {
        bail!("{}: no such file or folder", target.display());
    };
    let image = read_volume(&id, &image_path, Expect::ANY)?;
    let labels = seg_path
        .map(|p| outline_labels(&id, &p, &image))
        .transpose()?;
    let kind = image_path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok(PreviewSource {
        name: kind,
        image,
        labels,
    })
}

/// A segmentation's labels, of the image's shape. Any layout's labels: the outline is of the
/// whole tumour (non-zero).
fn outline_labels(id: &str, path: &Path, image: &Volume) -> Result<Vec<u8>> {
    let (seg, labels) = read_labels(id, path, Expect::dims(image.dims))?;
    if seg.dims != image.dims {
        bail!(
            "{}: shape {:?} differs from the image's {:?}",
            path.display(),
            seg.dims,
            image.dims
        );
    }
    Ok(labels)
}

/// The axial slice with the most tumour, or the middle one without a segmentation.
pub fn default_slice(dims: [usize; 3], labels: Option<&[u8]>) -> usize {
    let plane = dims[0] * dims[1];
    labels
        .and_then(|l| {
            (0..dims[2])
                .map(|z| {
                    (
                        l[z * plane..(z + 1) * plane]
                            .iter()
                            .filter(|&&v| v != 0)
                            .count(),
                        z,
                    )
                })
                .filter(|(n, _)| *n > 0)
                .max_by_key(|&(n, z)| (n, std::cmp::Reverse(z)))
                .map(|(_, z)| z)
        })
        .unwrap_or(dims[2] / 2)
}

/// Intensity window: 1st and 99th percentile of the brain (non-zero) voxels.
fn window(v: &Volume) -> (f32, f32) {
    let step = (v.data.len() / 200_000).max(1);
    let mut s: Vec<f32> = v
        .data
        .iter()
        .step_by(step)
        .copied()
        .filter(|&x| x != 0.0)
        .collect();
    if s.is_empty() {
        return (0.0, 1.0);
    }
    s.sort_by(f32::total_cmp);
    let q = |f: f64| s[((s.len() - 1) as f64 * f) as usize];
    let (lo, hi) = (q(0.01), q(0.99));
    (lo, if hi > lo { hi } else { lo + 1.0 })
}

/// Slice `z` as an RGB image (rows = y, columns = x, as stored), with the whole-tumour outline
/// in red when `labels` are given.
pub fn render_slice(v: &Volume, labels: Option<&[u8]>, z: usize) -> RgbImage {
    let [nx, ny, _] = v.dims;
    let (lo, hi) = window(v);
    let plane = &v.data[z * nx * ny..(z + 1) * nx * ny];
    let mut img = RgbImage::from_fn(nx as u32, ny as u32, |x, y| {
        let val = plane[y as usize * nx + x as usize];
        let g = (((val - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0) as u8;
        Rgb([g, g, g])
    });
    if let Some(l) = labels {
        let m = &l[z * nx * ny..(z + 1) * nx * ny];
        let at = |x: isize, y: isize| {
            x >= 0
                && y >= 0
                && (x as usize) < nx
                && (y as usize) < ny
                && m[y as usize * nx + x as usize] != 0
        };
        for y in 0..ny as isize {
            for x in 0..nx as isize {
                if at(x, y) && !(at(x - 1, y) && at(x + 1, y) && at(x, y - 1) && at(x, y + 1)) {
                    img.put_pixel(x as u32, y as u32, OUTLINE);
                }
            }
        }
    }
    img
}

pub const OUTLINE: Rgb<u8> = Rgb([255, 48, 48]);

/// How to draw in the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// kitty, iTerm2 or sixel when the terminal supports one, half-blocks otherwise.
    Auto,
    Kitty,
    Iterm,
    Sixel,
    /// Unicode half-blocks with colours: works everywhere.
    Blocks,
}

pub fn print(img: &RgbImage, width_cells: u32, protocol: Protocol) -> Result<()> {
    let cfg = viuer::Config {
        absolute_offset: false,
        width: Some(width_cells),
        use_kitty: matches!(protocol, Protocol::Auto | Protocol::Kitty),
        use_iterm: matches!(protocol, Protocol::Auto | Protocol::Iterm),
        use_sixel: matches!(protocol, Protocol::Auto | Protocol::Sixel),
        ..Default::default()
    };
    viuer::print(&image::DynamicImage::ImageRgb8(img.clone()), &cfg)
        .context("cannot print the image")?;
    Ok(())
}
