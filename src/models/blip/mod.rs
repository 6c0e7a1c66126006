//! BLIP's models that judge images (Li et al. 2022): its VQA model, which grounds modes by the answers to a question
//! (`dma modes --grounding blip-vqa`), and ImageReward, built on BLIP, which scores a prototype against its prompt.
//! Both are a ViT (`models::vit`) and BLIP's text transformer (`models::bert`).
pub mod image_reward;
pub mod vqa;
