//! `--device cpu|cuda|cuda:N|auto`.

use anyhow::{bail, Result};
use tch::Device;

pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    Ok(match s.as_str() {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(),
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::Cuda(n),
            _ => bail!("device '{s}' is not one of cpu, cuda, cuda:N, auto"),
        },
    })
}

/// Checks that a CUDA device exists before any work starts.
pub fn check_device(d: Device) -> Result<()> {
    if let Device::Cuda(n) = d {
        let count = tch::Cuda::device_count();
        if count == 0 {
            bail!("device cuda:{n} asked for, but CUDA is not available to this build (see `suggestive info`)");
        }
        if n as i64 >= count {
            bail!("device cuda:{n} asked for, but only {count} CUDA device(s) exist");
        }
    }
    Ok(())
}

pub fn describe(d: Device) -> String {
    match d {
        Device::Cpu => "CPU".into(),
        Device::Cuda(n) => format!("CUDA:{n}"),
        other => format!("{other:?}"),
    }
}
