//! `suggestive`: gradient-guided suggestive annotation for brain-tumour MRI segmentation.
//!
//! The library holds the engine pieces; `main.rs` is the command line on top of it.
//! - [`data`]: BraTS-layout NIfTI folders → preprocessed, memory-mapped slice cache.
//! - [`phantom`]: a synthetic BraTS-like data set, the embedded default.
//! - [`preview`]: one slice as an image, printed inline in the terminal.
//! - [`engine`]: the networks, training, evaluation and the three suggestion strategies.
//! - [`session`]: resumable experiment folders and the runner that executes them.
//! - [`tui`]: the interactive terminal interface (session browser and live dashboard).
//! - [`torch_info`]: what libtorch this binary runs on.
//! - [`staged_dir`]: folders built beside their place and moved there whole.
//! - [`stats`]: paired statistics for comparing strategies over repeats.
//! - [`untrusted`]: other people's text on its way into file names, scripts and the terminal.

/// `Display` for enums shown to users: the name they are written with in files (serde's).
macro_rules! display_as_serde {
    ($($t:ty),* $(,)?) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
                f.write_str(v.as_str().unwrap_or_default())
            }
        }
    )*};
}
pub(crate) use display_as_serde;

pub mod cluster;
pub mod data;
pub mod engine;
pub mod paths;
pub mod phantom;
pub mod preview;
pub mod session;
pub mod staged_dir;
pub mod stats;
pub mod torch_info;
pub mod tui;
pub mod untrusted;
