//! Diffusion Mental Averages: a text-to-image diffusion model's prototype of a concept, computed by aligning
//! sampling trajectories in h-space (the UNet bottleneck).
//!
//! - `models`: the networks (UNet, CLIP text encoder, VAE, tokenizer), weight names as in diffusers.
//! - `schedulers`: noise schedules and update rules, knowing nothing of the networks.
//! - `pipelines`: loading a model folder and composing the parts (text to conditioning, sampling, decoding).
//! - `method`: DMA itself, a per-step hook on the sampling loop.
//! - `adapters`: Textual Inversion and LoRA, learned per mode of a multimodal concept.
//! - `checkpoint`: what a long run keeps so that a stopped run resumes to the same result.
//! - `distributed`: the MPI ranks a run is spread over, and the exact means they share.
pub mod nn;
pub mod optim;
pub mod output;
pub mod weights;
pub mod models;
pub mod evaluation;
pub mod clustering;
pub mod checkpoint;
pub mod distributed;
pub mod files;
pub mod hub;
pub mod method;
pub mod passes;
pub mod stop;
pub mod loaders;
pub mod pipelines;
pub mod sampling;
pub mod training;
pub mod schedulers;
pub mod data;
pub mod device;
pub mod adapters;
