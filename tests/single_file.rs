//! Single-file (LDM layout) checkpoints: the committed fixtures' ldm.safetensors hold the same weights as their
//! diffusers folders (written by scripts/make_fixtures.py and checked there with diffusers' own single-file loader).
mod common;
use common::{assert_caught, closeness, fixture, fixture_with_edited_tensor, max_abs_diff, reference_json, references, Closeness};
use dma::loaders::single_file::{self, convert, detect_family, read_checkpoint, Configs, Family};
use dma::models::tokenizer::Tokenizer;
use dma::pipelines::DiffusionModel;
use dma::schedulers::ddim::PredictionType;
use dma::weights::read_safetensors;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn read(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path).unwrap().into_iter().collect()
}

/// The converted tensors are exactly the folder's: same keys, equal values (the fixture's values are exactly
/// representable in float16, whatever each file stores them as).
fn assert_same(part: &str, converted: &HashMap<String, Tensor>, folder_file: &Path) {
    let expected = read(folder_file);
    let keys = |m: &HashMap<String, Tensor>| m.keys().cloned().collect::<BTreeSet<_>>();
    let (got, want) = (keys(converted), keys(&expected));
    assert_eq!(
        got,
        want,
        "{part}: converted keys differ from {}: extra {:?}, missing {:?}",
        folder_file.display(),
        got.difference(&want).collect::<Vec<_>>(),
        want.difference(&got).collect::<Vec<_>>()
    );
    for (key, want) in &expected {
        let got = &converted[key];
        assert_eq!(got.size(), want.size(), "{part}: `{key}` has the wrong shape");
        assert_eq!(max_abs_diff(got, want), 0.0, "{part}: `{key}` differs from the folder's");
    }
    println!("{part}: {} tensors identical to {}", expected.len(), folder_file.display());
}

fn check_conversion(name: &str) {
    let dir = fixture(name);
    let ldm_file = dir.join("ldm.safetensors");
    let configs = Configs::from_folder(&dir).unwrap();
    let converted =
        convert(read_checkpoint(&ldm_file).unwrap(), &configs, &ldm_file).unwrap();
    assert_same(&format!("{name} unet"), &converted.unet, &dir.join("unet/diffusion_pytorch_model.safetensors"));
    assert_same(&format!("{name} vae"), &converted.vae, &dir.join("vae/diffusion_pytorch_model.safetensors"));
    assert_same(&format!("{name} text encoder"), &converted.text_encoder, &dir.join("text_encoder/model.safetensors"));
    if configs.sdxl.is_some() {
        assert_same(&format!("{name} second text encoder"), &converted.text_encoder_2, &dir.join("text_encoder_2/model.safetensors"));
    } else {
        assert!(converted.text_encoder_2.is_empty());
    }
}

#[test]
fn sd1_ldm_converts_to_the_folder_weights() {
    check_conversion("tiny-sd1");
}

#[test]
fn sd2_open_clip_ldm_converts_to_the_folder_weights() {
    check_conversion("tiny-sd2");
}

#[test]
fn sdxl_ldm_converts_to_the_folder_weights() {
    check_conversion("tiny-sdxl");
}

/// SDXL base 1.0 at full size with the built-in configs: every key of Stability's single file (listed, with its
/// shape and diffusers' names and shapes for it, in tests/fixtures/sdxl-base-ldm-keys.json, which
/// scripts/make_sdxl_single_file_fixture.py checked against diffusers' own single-file conversion) becomes exactly
/// diffusers' keys in the right model, in diffusers' shapes; the keys diffusers drops are dropped. The tensors are
/// zeros broadcast to their shapes, so no memory is spent.
#[test]
fn sdxl_base_keys_convert_with_the_builtin_configs() {
    let text = std::fs::read_to_string(fixture("sdxl-base-ldm-keys.json")).unwrap();
    let map: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape = |v: &serde_json::Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect() };
    let zero = |s: &[i64]| Tensor::zeros([1], (Kind::Half, Device::Cpu)).reshape(vec![1; s.len()]).expand(s, false);
    let mut ldm = HashMap::new();
    let mut expected: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for entry in map["entries"].as_array().unwrap() {
        let [key, ldm_shape, component, diffusers] = entry.as_array().unwrap().as_slice() else { panic!("{entry}") };
        ldm.insert(key.as_str().unwrap().to_string(), zero(&shape(ldm_shape)));
        for (name, s) in diffusers.as_object().unwrap() {
            expected.insert((component.as_str().unwrap().to_string(), name.clone()), shape(s));
        }
    }
    for ignored in map["ignored_keys"].as_array().unwrap() {
        ldm.insert(ignored[0].as_str().unwrap().to_string(), zero(&shape(&ignored[1])));
    }
    let file = Path::new("sd_xl_base_1.0.safetensors");
    assert_eq!(detect_family(&ldm, file).unwrap(), Family::Sdxl);
    let configs = Configs::builtin(Family::Sdxl).unwrap();
    let converted = convert(ldm, &configs, file).unwrap();
    let parts = [("unet", &converted.unet), ("vae", &converted.vae), ("text_encoder", &converted.text_encoder), ("text_encoder_2", &converted.text_encoder_2)];
    let got: BTreeMap<(String, String), Vec<i64>> =
        parts.iter().flat_map(|(part, tensors)| tensors.iter().map(move |(k, t)| ((part.to_string(), k.clone()), t.size()))).collect();
    let (got_keys, want_keys): (BTreeSet<_>, BTreeSet<_>) = (got.keys().collect(), expected.keys().collect());
    assert_eq!(got_keys, want_keys, "extra {:?}, missing {:?}", got_keys.difference(&want_keys).take(5).collect::<Vec<_>>(), want_keys.difference(&got_keys).take(5).collect::<Vec<_>>());
    for (key, want) in &expected {
        assert_eq!(&got[key], want, "{key:?} has diffusers' shape");
    }
    println!("{} LDM keys became {} diffusers keys in diffusers' shapes", map["entries"].as_array().unwrap().len(), expected.len());
}

/// The UNet and text encoder built from the single file of the fixture folder `dir` (configs from the folder)
/// against diffusers' reference outputs, with the tolerances of tests/unet_parity.rs (3e-5 of the largest magnitude)
/// and tests/clip_parity.rs (1e-5): the same weights through the same model code, so the same rounding.
fn single_file_parity(dir: &Path) -> (DiffusionModel, Vec<Closeness>) {
    let ldm_file = dir.join("ldm.safetensors");
    let sd = single_file::load_with_configs(&ldm_file, dir, Device::Cpu, Kind::Float).unwrap();
    let refs = references(dir);
    let t = Tensor::from(reference_json(dir)["unet_timestep"].as_i64().unwrap());
    let out = tch::no_grad(|| common::unet_of(&sd).forward(&refs["unet_sample"], &t, &refs["unet_encoder_hidden_states"], None, None));
    let hidden = common::text_condition(&sd, reference_json(dir)["prompt"].as_str().unwrap());
    let name = dir.file_name().unwrap().to_string_lossy();
    let checks = vec![
        closeness(&format!("{name} single-file UNet output"), &out.sample, &refs["unet_out"], 3e-5, 0.0),
        closeness(&format!("{name} single-file text encoder"), &hidden, &refs["cond_embeddings"], 1e-5, 0.0),
    ];
    assert_eq!(sd.info.weight_files, vec![ldm_file]);
    (sd, checks)
}

/// The whole loader, end to end: the UNet and text encoder built from the single file give diffusers' reference
/// outputs, and the pipeline records the file.
fn check_loaded(name: &str) -> DiffusionModel {
    let (sd, checks) = single_file_parity(&fixture(name));
    for c in checks {
        c.check();
    }
    sd
}

#[test]
fn sd1_single_file_matches_diffusers() {
    let sd = check_loaded("tiny-sd1");
    assert_eq!(sd.scheduler.prediction_type, PredictionType::Epsilon);
}

#[test]
fn sd2_single_file_matches_diffusers() {
    // The scheduler comes from the configs folder: this is how a v-prediction override reaches the model.
    let sd = check_loaded("tiny-sd2");
    assert_eq!(sd.scheduler.prediction_type, PredictionType::VPrediction);
}

/// The tolerances still catch what a converter gets wrong: the UNet's input convolution 1% too large in the file,
/// or OpenCLIP's fused attention projection split with the query and key swapped, fail the UNet or the text
/// encoder by orders of magnitude (BENCHMARKS.md, "Parity tests: tolerances and margins").
#[test]
fn a_wrong_weight_in_the_single_file_fails_its_parity_by_orders_of_magnitude() {
    let tmp = tempfile::tempdir().unwrap();
    let conv_in = "model.diffusion_model.input_blocks.0.0.weight";
    let dir = fixture_with_edited_tensor(&tmp.path().join("unet"), "tiny-sd2", "ldm.safetensors", conv_in, |w| w * 1.01);
    assert_caught(&format!("{conv_in} x 1.01"), &single_file_parity(&dir).1[0], 100.0);
    let in_proj = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight";
    let swap_query_and_key = |w: &Tensor| {
        let [q, k, v] = <[Tensor; 3]>::try_from(w.chunk(3, 0)).unwrap();
        Tensor::cat(&[k, q, v], 0)
    };
    let dir = fixture_with_edited_tensor(&tmp.path().join("text"), "tiny-sd2", "ldm.safetensors", in_proj, swap_query_and_key);
    assert_caught(&format!("{in_proj} with query and key swapped"), &single_file_parity(&dir).1[1], 100.0);
}

/// Spot checks of SD 1.5's real numbering (12 input and output blocks, upsamplers at output_blocks.2.1, 5.2 and 8.2,
/// the reversed VAE decoder levels), as diffusers' converter maps them; shapes play no part in the renaming.
#[test]
fn sd15_numbering_is_derived_from_the_builtin_config() {
    let cases = [
        (
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        ),
        ("model.diffusion_model.input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
        (
            "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
            "down_blocks.1.resnets.0.conv_shortcut.weight",
        ),
        ("model.diffusion_model.input_blocks.9.0.op.bias", "down_blocks.2.downsamplers.0.conv.bias"),
        ("model.diffusion_model.input_blocks.11.0.out_layers.3.bias", "down_blocks.3.resnets.1.conv2.bias"),
        ("model.diffusion_model.middle_block.2.emb_layers.1.weight", "mid_block.resnets.1.time_emb_proj.weight"),
        ("model.diffusion_model.output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
        ("model.diffusion_model.output_blocks.3.0.in_layers.2.weight", "up_blocks.1.resnets.0.conv1.weight"),
        ("model.diffusion_model.output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
        ("model.diffusion_model.output_blocks.8.2.conv.weight", "up_blocks.2.upsamplers.0.conv.weight"),
        ("model.diffusion_model.output_blocks.11.1.proj_out.weight", "up_blocks.3.attentions.2.proj_out.weight"),
        ("model.diffusion_model.out.2.weight", "conv_out.weight"),
        ("first_stage_model.decoder.up.3.upsample.conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight"),
        ("first_stage_model.decoder.up.0.block.2.norm1.bias", "decoder.up_blocks.3.resnets.2.norm1.bias"),
        (
            "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
            "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
        ),
        ("first_stage_model.encoder.down.2.downsample.conv.weight", "encoder.down_blocks.2.downsamplers.0.conv.weight"),
        ("first_stage_model.encoder.mid.attn_1.proj_out.weight", "encoder.mid_block.attentions.0.to_out.0.weight"),
        (
            "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias",
            "text_model.encoder.layers.11.mlp.fc2.bias",
        ),
    ];
    let training_state = [
        "model_ema.decay",
        "model_ema.num_updates",
        "betas",
        "alphas_cumprod_prev",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_mean_coef1",
        "log_one_minus_alphas_cumprod",
        "logvar",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
    ];
    let ldm: HashMap<String, Tensor> = cases
        .iter()
        .map(|(k, _)| *k)
        .chain(training_state)
        .map(|k| (k.to_string(), Tensor::zeros([2], (Kind::Float, Device::Cpu))))
        .collect();
    let configs = Configs::builtin(Family::Sd1).unwrap();
    let converted =
        convert(ldm, &configs, Path::new("sd15.safetensors")).unwrap();
    let mut renamed: BTreeSet<&String> =
        converted.unet.keys().chain(converted.vae.keys()).chain(converted.text_encoder.keys()).collect();
    for (ldm, diffusers) in cases {
        assert!(renamed.remove(&diffusers.to_string()), "`{ldm}` should become `{diffusers}`");
    }
    assert!(renamed.is_empty(), "unexpected keys {renamed:?}");
}

#[test]
fn builtin_configs_parse_and_resolve() {
    let sd15 = Configs::builtin(Family::Sd1).unwrap();
    assert_eq!(sd15.unet.block_out_channels, [320, 640, 1280, 1280]);
    assert_eq!(sd15.unet.heads, [8, 8, 8, 8]);
    assert_eq!((sd15.unet.cross_attention_dim, sd15.unet.use_linear_projection), (768, false));
    assert_eq!((sd15.text_encoder.hidden_size, sd15.text_encoder.num_hidden_layers), (768, 12));
    assert_eq!(sd15.text_encoder.hidden_act, "quick_gelu");
    assert_eq!(sd15.vae.block_out_channels, [128, 256, 512, 512]);
    assert_eq!(sd15.scheduler.prediction_type, PredictionType::Epsilon);
    assert!(!sd15.scheduler.clip_sample && !sd15.scheduler.set_alpha_to_one && sd15.scheduler.steps_offset == 1);

    let sdxl = Configs::builtin(Family::Sdxl).unwrap();
    assert_eq!(sdxl.unet.block_out_channels, [320, 640, 1280]);
    assert_eq!((sdxl.unet.cross_attention_dim, sdxl.unet.use_linear_projection), (2048, true));
    assert_eq!(sdxl.unet.text_time.map(|t| (t.time_embed_dim, t.input_dim)), Some((256, 2816)));
    let second = sdxl.sdxl.as_ref().expect("SDXL has a second text encoder");
    let te = &second.text_encoder_2;
    assert_eq!((te.hidden_size, te.num_hidden_layers, te.num_attention_heads, te.projection_dim), (1280, 32, 20, 1280));
    assert!(second.force_zeros_for_empty_prompt);
    assert_eq!(sdxl.scheduler.prediction_type, PredictionType::Epsilon);
    assert_eq!(&second.tokenizer_2.encode("a cat").unwrap()[..5], &[49406, 320, 2368, 49407, 0], "tokenizer_2 pads with \"!\"");
    assert_eq!(&sdxl.tokenizer.encode("a cat").unwrap()[..5], &[49406, 320, 2368, 49407, 49407]);

    let sd21 = Configs::builtin(Family::Sd2).unwrap();
    assert_eq!(sd21.unet.heads, [5, 10, 20, 20]);
    assert_eq!((sd21.unet.cross_attention_dim, sd21.unet.use_linear_projection), (1024, true));
    let te = &sd21.text_encoder;
    assert_eq!(
        (te.hidden_size, te.num_hidden_layers, te.num_attention_heads, te.intermediate_size),
        (1024, 23, 16, 4096)
    );
    assert_eq!(te.hidden_act, "gelu");
    assert_eq!(sd21.scheduler.prediction_type, PredictionType::VPrediction);
    assert!(matches!(&sd21.tokenizer, Tokenizer::Clip(t) if t.vocab_size() == 49408));
}

#[test]
fn family_is_detected_from_the_keys() {
    for (name, family) in [("tiny-sd1", Family::Sd1), ("tiny-sd2", Family::Sd2), ("tiny-sdxl", Family::Sdxl)] {
        let file = fixture(name).join("ldm.safetensors");
        assert_eq!(detect_family(&read_checkpoint(&file).unwrap(), &file).unwrap(), family, "{name}");
    }
}

#[test]
fn a_non_ldm_file_is_refused_clearly() {
    let file = fixture("tiny-sd1").join("unet/diffusion_pytorch_model.safetensors");
    let err = format!(
        "{:#}",
        single_file::load(&file, Device::Cpu, Kind::Float).err().expect("a diffusers UNet file is not a checkpoint")
    );
    println!("{err}");
    assert!(err.contains(&file.display().to_string()), "the error names the file: {err}");
    assert!(err.contains("not a Stable Diffusion checkpoint in the single-file (LDM) layout"), "{err}");
    assert!(err.contains("model.diffusion_model."), "the error says what was expected: {err}");
}

#[test]
fn a_key_outside_the_configs_is_an_error() {
    // One more text layer than the config describes: for OpenCLIP the block after the last is dropped, so the
    // config must be smaller by two for a block to be left over.
    let dir = fixture("tiny-sd2");
    let file = dir.join("ldm.safetensors");
    let mut configs = Configs::from_folder(&dir).unwrap();
    configs.text_encoder.num_hidden_layers = 1;
    let err = convert(read_checkpoint(&file).unwrap(), &configs, &file).err().unwrap();
    assert!(err.to_string().contains("cond_stage_model.model.transformer.resblocks.2."), "{err}");
}

#[test]
fn builtin_tokenizers_pad_as_their_family_does() {
    let sd1 = Configs::builtin(Family::Sd1).unwrap().tokenizer.encode("a cat").unwrap();
    let sd2 = Configs::builtin(Family::Sd2).unwrap().tokenizer.encode("a cat").unwrap();
    assert_eq!(&sd1[..5], &[49406, 320, 2368, 49407, 49407], "SD 1 pads with <|endoftext|>");
    assert_eq!(&sd2[..5], &[49406, 320, 2368, 49407, 0], "SD 2 pads with \"!\" (id 0)");
}

#[test]
fn sdxl_refiner_and_inpainting_single_files_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, keys: &[(&str, &[i64])]| {
        let path = tmp.path().join(name);
        let tensors: Vec<(String, Tensor)> = keys.iter().map(|(k, s)| (k.to_string(), Tensor::zeros(*s, (Kind::Float, Device::Cpu)))).collect();
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        dma::weights::write_safetensors(&path, &named).unwrap();
        path
    };
    let unet = |channels: i64| ("model.diffusion_model.input_blocks.0.0.weight", vec![8, channels, 3, 3]);
    let refiner = write("refiner.safetensors", &[(unet(4).0, &unet(4).1), ("first_stage_model.decoder.conv_in.bias", &[4]), ("conditioner.embedders.0.model.ln_final.weight", &[8])]);
    let error = format!("{:#}", read_checkpoint(&refiner).unwrap_err());
    assert!(error.contains("SDXL refiner"), "{error}");
    let inpainting = write(
        "inpainting.safetensors",
        &[(unet(9).0, &unet(9).1), ("first_stage_model.decoder.conv_in.bias", &[4]), ("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", &[8]), ("conditioner.embedders.1.model.ln_final.weight", &[8])],
    );
    let error = format!("{:#}", read_checkpoint(&inpainting).unwrap_err());
    assert!(error.contains("9 input channels") && error.contains("inpainting"), "{error}");
    let half = write("half.safetensors", &[(unet(4).0, &unet(4).1), ("first_stage_model.decoder.conv_in.bias", &[4]), ("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", &[8])]);
    let error = format!("{:#}", read_checkpoint(&half).unwrap_err());
    assert!(error.contains("lacks its text encoders") && error.contains("conditioner.embedders.1.model."), "{error}");
}
