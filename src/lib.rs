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

pub mod data;
pub mod engine;
pub mod paths;
pub mod phantom;
pub mod preview;
pub mod session;
pub mod staged_dir;
pub mod torch_info;
pub mod tui;
