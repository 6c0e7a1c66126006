//! Averages of samples: in pixels, and in latent space (decoded: Avg VAE). Both blur what varies.
use crate::pipelines::DiffusionModel;
use tch::{Kind, Tensor};

/// The mean image [C,H,W] of images [N,C,H,W].
pub fn pixel_average(images: &Tensor) -> Tensor {
    images.mean_dim(0, false, Kind::Float)
}

/// The mean latent [1,C,H,W] of latents [N,C,H,W]: the k-means centre for k = 1, which D4M starts from and MGD3
/// guides toward.
pub fn latent_centre(latents: &Tensor) -> Tensor {
    latents.mean_dim(0, true, latents.kind())
}

/// Avg VAE: the mean latent, decoded, [C,H,W]. For a pixel-space model this is the pixel average.
pub fn avg_vae(model: &DiffusionModel, latents: &Tensor) -> Tensor {
    model.decode(&latent_centre(latents)).squeeze_dim(0)
}
