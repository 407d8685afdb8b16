//! The method itself, on tch: networks, training loops, evaluation, and the suggestion
//! strategies. Nothing here knows about sessions or the UI.

pub mod adam;
pub mod batch;
pub mod cone;
pub mod coreset;
pub mod device;
pub mod eval;
pub mod host_memory;
pub mod manifold;
pub mod mixed;
pub mod nets;
pub mod replay;
pub mod select;
pub mod surface;
pub mod train;
