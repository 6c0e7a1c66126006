//! The diffusion trainer: the loss falls on a learnable toy problem, and a run resumed from a checkpoint ends
//! bit-identical to an uninterrupted one.
mod common;
use dma::models::denoiser::Condition;
use dma::schedulers::ddim::{DdimConfig, DdimScheduler};
use dma::training::diffusion::{min_snr_weights, weighted_noise_prediction_loss, DiffusionTrainer, TrainSettings};
use dma::training::embedded;
use serde_json::json;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A model folder with a tiny UNet (16x16, two levels) and text encoder, configs only.
fn tiny_model_folder(dir: &Path) {
    let unet = json!({
        "sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 16, "attention_head_dim": 2, "norm_num_groups": 4
    });
    let text = json!({
        "vocab_size": 10, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 4, "hidden_act": "quick_gelu", "eos_token_id": 9
    });
    for (file, value) in [("unet/config.json", unet), ("text_encoder/config.json", text), ("scheduler/scheduler_config.json", embedded::scheduler_config())] {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        dma::files::write_json(&path, &value).unwrap();
    }
}

fn settings(steps: usize) -> TrainSettings {
    TrainSettings { steps, batch: 4, lr: 3e-3, warmup: 2, weight_decay: 0.0, uncond_prob: 0.0, ema_decay: 0.9, seed: 11, checkpoint_every: 2, min_snr_gamma: None }
}

/// A fixed toy batch: two kinds of images, each with its own caption.
fn batch() -> (Tensor, Tensor) {
    let left = Tensor::ones([2, 1, 16, 8], (Kind::Float, Device::Cpu));
    let images = Tensor::cat(&[Tensor::cat(&[&left, &(-&left)], 3), Tensor::cat(&[-&left, left.shallow_clone()], 3)], 0);
    let ids = Tensor::from_slice(&[8i64, 1, 9, 9, 8, 1, 9, 9, 8, 2, 9, 9, 8, 2, 9, 9]).view([4, 4]);
    (images, ids)
}

#[test]
fn resuming_from_a_checkpoint_matches_an_uninterrupted_run() {
    let _rng = common::global_rng();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_folder(&model);
    let (images, ids) = batch();

    let straight_dir = tmp.path().join("straight");
    let mut straight = DiffusionTrainer::new(&model, &straight_dir, settings(4), Device::Cpu).unwrap();
    for _ in 0..4 {
        straight.train_step(&images, &ids);
    }

    let resumed_dir = tmp.path().join("resumed");
    let mut first = DiffusionTrainer::new(&model, &resumed_dir, settings(4), Device::Cpu).unwrap();
    first.train_step(&images, &ids);
    first.train_step(&images, &ids);
    first.save_checkpoint(&resumed_dir).unwrap();
    drop(first);
    let mut second = DiffusionTrainer::new(&model, &resumed_dir, settings(4), Device::Cpu).unwrap();
    assert_eq!(second.step, 2);
    second.train_step(&images, &ids);
    second.train_step(&images, &ids);
    second.save_checkpoint(&resumed_dir).unwrap();
    // Each checkpoint replaces the one before: one tensor file, the one the record names.
    let tensor_files: Vec<String> = std::fs::read_dir(&resumed_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert_eq!(tensor_files, vec!["checkpoint-step4.safetensors".to_string()]);

    let exported = |trainer: &DiffusionTrainer| {
        trainer.export(&model).unwrap();
        let mut tensors = dma::weights::read_safetensors(&model.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
        tensors.sort_by(|x, y| x.0.cmp(&y.0));
        tensors
    };
    let (a, b) = (exported(&straight), exported(&second));
    assert_eq!(a.len(), b.len());
    // Exact: the resumed steps run the same ops in the same order on the same machine, from a checkpoint that
    // restores the whole training state bit for bit.
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "{ka} differs after resuming");
    }
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let _rng = common::global_rng();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_folder(&model);
    let state = tmp.path().join("state");
    let trainer = DiffusionTrainer::new(&model, &state, settings(4), Device::Cpu).unwrap();
    trainer.save_checkpoint(&state).unwrap();
    let err = DiffusionTrainer::new(&model, &state, TrainSettings { lr: 1.0, ..settings(4) }, Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("other settings"), "{err}");
}

#[test]
fn the_loss_falls_on_a_toy_problem() {
    let _rng = common::global_rng();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_folder(&model);
    let (images, ids) = batch();
    let mut trainer = DiffusionTrainer::new(&model, &tmp.path().join("state"), settings(120), Device::Cpu).unwrap();
    let losses: Vec<f64> = (0..120).map(|_| trainer.train_step(&images, &ids)).collect();
    let early: f64 = losses[..20].iter().sum::<f64>() / 20.0;
    let late: f64 = losses[100..].iter().sum::<f64>() / 20.0;
    println!("mean loss, first 20 steps {early:.4}, last 20 {late:.4}");
    assert!(late < 0.6 * early, "the loss did not fall: {early} -> {late}");
}

#[test]
fn min_snr_weights_follow_the_schedule() {
    let scheduler = DdimScheduler::new(&serde_json::from_value::<DdimConfig>(embedded::scheduler_config()).unwrap(), 1).unwrap();
    let timesteps = Tensor::from_slice(&[0i64, 100, 400, 999]);
    let weights = Vec::<f64>::try_from(min_snr_weights(&scheduler, &timesteps, 5.0)).unwrap();
    for (w, t) in weights.iter().zip([0i64, 100, 400, 999]) {
        let alpha = scheduler.alpha_cumprod(t);
        let snr = alpha / (1.0 - alpha);
        assert!((w - snr.min(5.0) / snr).abs() < 1e-12, "t {t}: {w}");
    }
    // Nearly clean steps count little, noisy ones fully.
    assert!(weights[0] < 1e-3 && weights[3] == 1.0, "{weights:?}");
}

#[test]
fn min_snr_loss_is_the_weighted_mean_of_the_samples_errors() {
    let _rng = common::global_rng();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_folder(&model);
    let (images, ids) = batch();
    let trainer = DiffusionTrainer::new(&model, &tmp.path().join("state"), settings(1), Device::Cpu).unwrap();
    let scheduler = DdimScheduler::new(&DdimConfig::from_file(&model.join("scheduler/scheduler_config.json")).unwrap(), 1).unwrap();
    let condition = Condition::Text(trainer.text_encoder.as_ref().unwrap().forward(&ids));
    let loss = |gamma: Option<f64>| {
        tch::manual_seed(3);
        tch::no_grad(|| weighted_noise_prediction_loss(&trainer.denoiser, &scheduler, &images, &condition, gamma)).double_value(&[])
    };
    // The same draws, rebuilt from the scheduler and the network.
    tch::manual_seed(3);
    let timesteps = Tensor::randint(1000, [4], (Kind::Int64, Device::Cpu));
    let noise = Tensor::randn(images.size(), (Kind::Float, Device::Cpu));
    let (noisy, target) = scheduler.training_pair(&images, &noise, &timesteps);
    let prediction = tch::no_grad(|| trainer.denoiser.predict(&noisy, &timesteps, &condition).noise);
    let per_sample = Vec::<f64>::try_from((prediction - target).square().mean_dim([1i64, 2, 3].as_slice(), false, Kind::Double)).unwrap();
    let weights = Vec::<f64>::try_from(min_snr_weights(&scheduler, &timesteps, 2.0)).unwrap();
    let expected = per_sample.iter().zip(&weights).map(|(e, w)| e * w).sum::<f64>() / 4.0;
    let plain = per_sample.iter().sum::<f64>() / 4.0;
    assert!(weights.iter().any(|&w| w < 0.99), "the draws should include a nearly clean step: {weights:?}");
    let (weighted, unweighted) = (loss(Some(2.0)), loss(None));
    assert!((weighted - expected).abs() < 1e-5 * expected, "{weighted} against {expected}");
    assert!((unweighted - plain).abs() < 1e-5 * plain, "{unweighted} against {plain}");
    // A gamma above every step's SNR weights nothing.
    assert!((loss(Some(1e12)) - unweighted).abs() < 1e-5 * plain);
}
