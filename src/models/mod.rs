pub mod unet;
pub mod tokenizer;
pub mod clip_text;
pub mod vae;
pub mod clip_vision;
pub mod clip;
