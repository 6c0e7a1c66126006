//! Named alignment schedules: a model's defaults, or the paper's exact recipe. Flags given beside a schedule
//! override its values.
use super::AlignSettings;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The model's defaults (its dma_defaults.json, else the paper's settings with our early stop).
    Default,
    /// The paper's recipe: 10 aligned steps of 300 Adam iterations at lr 2e-2, every iteration run, every latent
    /// optimised. (The paper's K is 1000: give it with --latents.)
    Paper,
}

impl Schedule {
    /// The schedule's settings, from the model's `defaults`.
    pub fn settings(self, defaults: AlignSettings) -> AlignSettings {
        match self {
            Schedule::Default => defaults,
            Schedule::Paper => AlignSettings { tol: 0.0, ..AlignSettings::paper(defaults.branch) },
        }
    }
}
