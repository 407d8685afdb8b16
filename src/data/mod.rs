//! The data layer: discovery of BraTS and Decathlon folders, NIfTI reading with validation, preprocessing,
//! and the memory-mapped cache that later loads read instead of the NIfTI files.

mod build;
mod cache;
mod dataset;
mod error;
mod layout;
mod modality;
mod preprocess;
mod summary;
mod volume;

pub use cache::{CacheStatus, PatientInfo, SkippedPatient, CACHE_FORMAT_VERSION};
pub use dataset::{Dataset, LoadOptions, LoadProgress, LoadReport, Segmentations};
pub use error::DataError;
pub use layout::{
    discover, find_case, site_from_id, DatasetLayout, ImageFile, LayoutKind, PatientFiles,
};
pub use modality::{parse_modalities, Modality};
pub use preprocess::{labels_to_original, preprocess_labels, Geometry, Preprocessing};
pub use summary::Summary;
pub use volume::{
    affine_difference, read_affine, read_channels, read_dims, read_file_bytes, read_labels,
    read_seg, read_volume, Affine, Expect, Volume, AFFINE_TOLERANCE, MAX_VOXELS,
};
