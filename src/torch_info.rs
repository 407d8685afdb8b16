//! What libtorch this binary runs on: shown by `suggestive info`, and a check that linking
//! worked (CUDA is seen only if libtorch_cuda.so stayed linked; see build.rs).

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct TorchInfo {
    pub libtorch_lib: &'static str,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub threads: i32,
    /// How the C allocator behind libtorch's CPU tensors is set (engine::host_memory).
    pub host_allocator: &'static str,
    /// A 2×2 matrix product computed by libtorch, as a smoke test.
    pub smoke_test: bool,
}

pub fn torch_info() -> TorchInfo {
    let a = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
    let p = a.matmul(&a);
    let v: Vec<f32> = Vec::try_from(p.reshape([-1])).unwrap_or_default();
    TorchInfo {
        libtorch_lib: env!("SUGGESTIVE_LIBTORCH_LIB"),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        threads: tch::get_num_threads(),
        host_allocator: crate::engine::host_memory::describe(),
        smoke_test: v == [7.0, 10.0, 15.0, 22.0],
    }
}
