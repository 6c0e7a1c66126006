//! Devices and dtypes as the command line, the examples and the benchmarks name them.
use anyhow::{bail, Result};
use tch::{Device, Kind};

/// `cpu`, `cuda` or `cuda:N`, checked against the devices present.
pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("--device {other}: expected cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = device {
        let available = tch::Cuda::device_count() as usize;
        if i >= available {
            bail!("--device {name}: {available} CUDA device(s) available");
        }
    }
    Ok(device)
}

/// `f32`, `f16`, `bf16` (and `f64`, for checks).
pub fn parse_kind(name: &str) -> Result<Kind> {
    Ok(match name {
        "f32" => Kind::Float,
        "f16" => Kind::Half,
        "bf16" => Kind::BFloat16,
        "f64" => Kind::Double,
        other => bail!("--dtype {other}: expected f32, f16 or bf16 (or f64)"),
    })
}

/// The name `parse_kind` reads for `kind`.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        Kind::Double => "f64",
        _ => "other",
    }
}
