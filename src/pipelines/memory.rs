//! Whether a run fits in the device's memory, checked before any long work (and before its latents are drawn):
//! the model's weights, what the run keeps for all of its latents at once (the latents, their h, their decoded
//! images), plus the activations kept per latent of a batch by the run's largest user of memory: one alignment
//! iteration (the encoder half's forward and backward) for sampling and DMA, one adapter training step (the whole
//! UNet's forward and backward) for `dma modes --average`. Everything is counted in f64, so no count, however
//! large, overflows on the way to its refusal.
//!
//! The per-latent figure of an alignment iteration is the network's own count (`Denoiser::activation_bytes`:
//! resnets and transformer layers of the encoder half, fitted to SD 1.5 and SDXL; a DiT's tokens and blocks) in
//! proportion to the dtype's width; a training step's is that times what SD 1.5's measurements gave (1.90 GB per
//! sample against 0.65 GB per latent, BENCHMARKS.md "Peak memory of one alignment iteration").
use super::DiffusionModel;
use anyhow::{bail, Result};
use tch::{Device, Kind};

/// Measured on SD 1.5: a training step's bytes per sample (the whole UNet's forward and backward) over an
/// alignment iteration's per latent (1.904 GB / 0.646 GB).
const TRAINING_OVER_ALIGNMENT: f64 = 1.904 / 0.646;
/// What libtorch and the process need beside the weights (SD 1.5: 3.95 GB fixed less 3.44 GB of weights).
const RUNTIME_BYTES: f64 = 0.51e9;
/// Refuse only what clearly does not fit: the estimate is a line fitted to three points.
const MARGIN: f64 = 1.25;
/// A run may say how much memory to assume instead of asking the system (for tests, or to leave room).
pub const LIMIT_VARIABLE: &str = "DMA_MEMORY_LIMIT";

fn dtype_bytes(kind: Kind) -> f64 {
    match kind {
        Kind::Half | Kind::BFloat16 => 2.0,
        Kind::Double => 8.0,
        _ => 4.0,
    }
}

/// What a batch is of: the latents of an alignment iteration (`--batch`), or the samples of an adapter's training
/// step (`--adapter-batch`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    Alignment,
    Training,
}

impl Work {
    fn flag(self) -> &'static str {
        match self {
            Work::Alignment => "--batch",
            Work::Training => "--adapter-batch",
        }
    }

    /// A batch element's bytes over an alignment iteration's latent.
    fn factor(self) -> f64 {
        match self {
            Work::Alignment => 1.0,
            Work::Training => TRAINING_OVER_ALIGNMENT,
        }
    }
}

/// The estimated memory of `work` on `model` over latents of shape `latents` [K, C, H, W]: (fixed bytes, bytes per
/// latent of a batch). The fixed part holds the weights, the runtime, and per latent of the K: the latents (f32,
/// with the copy a step makes), its h (in the model's dtype) and its decoded image (f32).
pub fn estimate(model: &DiffusionModel, work: Work, latents: [i64; 4]) -> (f64, f64) {
    let weights: f64 = model.info.weight_files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len() as f64).sum();
    let [count, channels, height, width] = latents.map(|n| n as f64);
    let bytes = dtype_bytes(model.kind);
    let per_latent = model.denoiser.activation_bytes([latents[2], latents[3]]) * work.factor() * bytes / 4.0;
    let h = model.denoiser.h_elements([latents[2], latents[3]]) * bytes;
    let [image_channels, image_height, image_width] = model.image_shape().map(|n| n as f64);
    let [_, native_height, native_width] = model.latent_shape().map(|n| n as f64);
    let image = image_channels * image_height * image_width * (height * width) / (native_height * native_width) * 4.0;
    let kept = count * (2.0 * channels * height * width * 4.0 + h + image);
    (weights + RUNTIME_BYTES + kept, per_latent)
}

/// What the device has free, in bytes, if it can be told: the CPU's MemAvailable, a GPU's free memory from
/// nvidia-smi, or `DMA_MEMORY_LIMIT`.
pub fn available(device: Device) -> Option<f64> {
    if let Some(limit) = std::env::var(LIMIT_VARIABLE).ok().and_then(|v| v.parse::<f64>().ok()) {
        return Some(limit);
    }
    match device {
        Device::Cpu => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
            Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? * 1024.0)
        }
        Device::Cuda(i) => {
            let output = std::process::Command::new("nvidia-smi")
                .args(["--query-gpu=memory.free", "--format=csv,noheader,nounits", &format!("--id={i}")])
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&output.stdout).trim().parse::<f64>().ok()? * 1024.0 * 1024.0)
        }
        _ => None,
    }
}

/// Refuses a run of `batch` latents per UNet call of `work` whose estimated need clearly exceeds `available`
/// bytes, naming the largest batch that fits, or, when not even one latent of a batch fits beside what the run keeps
/// for all of them, the run's size (`count`: the flag that set it, with its value).
pub fn check(estimate: (f64, f64), work: Work, batch: i64, count: &str, available: f64, device: &str) -> Result<()> {
    let flag = work.flag();
    let (fixed, per_latent) = estimate;
    let need = fixed + per_latent * batch as f64;
    if need <= available * MARGIN {
        return Ok(());
    }
    let fits = ((available * MARGIN - fixed) / per_latent).floor();
    let advice = if fits >= 1.0 {
        format!("{flag} {} would fit", fits as i64)
    } else {
        format!("even {flag} 1 does not: use fewer or smaller latents than {count}, --dtype f16, or a device with more memory")
    };
    bail!(
        "{flag} {batch} with {count} needs about {} ({} for the model and all latents, {} per latent of a batch), more than the {} free on {device}; {advice}",
        size(need),
        size(fixed),
        size(per_latent),
        size(available)
    )
}

/// Bytes as a person reads them: GB, or MB below a gigabyte, or powers of ten beyond a petabyte.
fn size(bytes: f64) -> String {
    if bytes >= 1e15 {
        format!("{bytes:.1e} bytes")
    } else if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else {
        format!("{:.1} MB", bytes / 1e6)
    }
}

/// `check` against what `model`'s device has free, for a run over latents of shape `latents` set by `count` (the
/// flag and its value); nothing is checked where that cannot be told.
pub fn check_fits(model: &DiffusionModel, work: Work, batch: i64, latents: [i64; 4], count: &str, device_name: &str) -> Result<()> {
    // An alignment batch larger than the run's latents holds only those; a training step draws its batch with
    // replacement, so its batch is what it says.
    let batch = match work {
        Work::Alignment => batch.min(latents[0]).max(1),
        Work::Training => batch,
    };
    match available(model.device) {
        Some(free) => check(estimate(model, work, latents), work, batch, count, free, device_name),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::unet::UNetConfig;

    fn config(name: &str) -> UNetConfig {
        UNetConfig::from_file(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/configs").join(name).join("unet/config.json")).unwrap()
    }

    #[test]
    fn activations_match_the_measurements_and_scale_with_area() {
        let (sd15, sdxl) = (config("sd15"), config("sdxl"));
        let relative = |got: f64, want: f64| (got / want - 1.0).abs();
        // The two measurements the coefficients were fitted to (to their 5 significant digits).
        assert!(relative(sd15.encoder_activation_bytes([64, 64]), 0.646e9) < 1e-4);
        assert!(relative(sdxl.encoder_activation_bytes([128, 128]), 6.30e9) < 1e-4);
        // Half the side (SD 1.5 at 256 px), a quarter; a wide image, twice.
        assert!(relative(sd15.encoder_activation_bytes([32, 32]), sd15.encoder_activation_bytes([64, 64]) / 4.0) < 1e-12);
        assert!(relative(sd15.encoder_activation_bytes([64, 128]), sd15.encoder_activation_bytes([64, 64]) * 2.0) < 1e-12);
        // SDXL at 512 px (64x64 latents) keeps a quarter of its 1024 px figure, still more than SD 1.5 at 512 px.
        let sdxl_512 = sdxl.encoder_activation_bytes([64, 64]);
        assert!(relative(sdxl_512, 6.30e9 / 4.0) < 1e-4 && sdxl_512 > 2.0 * 0.646e9, "{sdxl_512}");
    }

    #[test]
    fn a_batch_that_clearly_does_not_fit_is_refused_with_one_that_does() {
        let estimate = (4e9, 0.65e9);
        assert!(check(estimate, Work::Alignment, 16, "--latents 32", 24e9, "cuda:0").is_ok());
        let error = check(estimate, Work::Alignment, 64, "--latents 64", 24e9, "cuda:0").unwrap_err().to_string();
        // (24 x 1.25 - 4) / 0.65 = 40.
        assert!(error.contains("--batch 64") && error.contains("--batch 40 would fit") && error.contains("cuda:0"), "{error}");
        let error = check(estimate, Work::Alignment, 1, "--latents 8", 2e9, "cpu").unwrap_err().to_string();
        assert!(error.contains("4.7 GB (4.0 GB for the model and all latents, 650.0 MB per latent of a batch)") && error.contains("2.0 GB free on cpu"), "{error}");
        assert!(error.contains("even --batch 1") && error.contains("--latents 8"), "{error}");
        let error = check(estimate, Work::Training, 64, "--samples 64", 24e9, "cuda:0").unwrap_err().to_string();
        assert!(error.contains("--adapter-batch 64") && error.contains("--adapter-batch 40 would fit"), "{error}");
    }
}
