//! What other methods give for a concept's "average", computed from the same samples as DMA, for comparison
//! (issue "Evaluation"; NOTES §1): the pixel average, Avg VAE, D4M-style image-to-image from the samples' latent
//! centre, MGD3-style sampling guided toward that centre, and the most typical sample.
pub mod averages;
pub mod d4m;
pub mod mgd3;
pub mod typical;

use serde::{Deserialize, Serialize};

/// The baselines' parameters; the defaults are the papers'.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineSettings {
    /// D4M: how far the centre is noised before image-to-image (0.7: from 70% of the schedule) and its guidance.
    pub d4m_strength: f64,
    pub d4m_guidance: f64,
    /// MGD3: the mode guidance scale and the fraction of the steps it acts on (the first half).
    pub mgd3_scale: f64,
    pub mgd3_fraction: f64,
}

impl Default for BaselineSettings {
    fn default() -> Self {
        Self { d4m_strength: 0.7, d4m_guidance: 8.0, mgd3_scale: 0.1, mgd3_fraction: 0.5 }
    }
}

impl BaselineSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((0.0..=1.0).contains(&self.d4m_strength), "--d4m-strength must be between 0 and 1, got {}", self.d4m_strength);
        anyhow::ensure!((0.0..=1.0).contains(&self.mgd3_fraction), "--mgd3-fraction must be between 0 and 1, got {}", self.mgd3_fraction);
        anyhow::ensure!(self.d4m_guidance.is_finite() && self.mgd3_scale.is_finite(), "--d4m-guidance and --mgd3-scale must be numbers");
        Ok(())
    }
}
