//! Adapters: the files diffusers and peft write load here and act as they do there (tests/fixtures/adapters,
//! scripts/make_adapter_fixture.py); ours are written with the same key names; the gradients adapter training
//! follows match finite differences; only the adapter's parameters are trained; training lowers the loss on
//! held-out samples; training stopped midway resumes to exactly the same adapter; adapters made for another model
//! are refused.
mod common;
use common::{assert_caught, check_gradient, closeness, fixture, max_abs_diff, references, Closeness};
use dma::adapters::class_embedding::ClassEmbedding;
use dma::adapters::lora::{Lora, LoraLayer};
use dma::adapters::textual_inversion::TextualInversion;
use dma::adapters::training::{mean_loss, prompt_with_token, train, AdapterTraining};
use dma::adapters::{Adapter, AdapterKind};
use dma::checkpoint::sampling::{Start, StepState};
use dma::checkpoint::training::{self as checkpoint, Resume, TrainingState};
use dma::checkpoint::{Checkpoints, NoCheckpoints};
use dma::loaders::run_defaults;
use dma::pipelines::mental_average::{run, seeded_latents};
use dma::loaders::ModelSource;
use dma::models::denoiser::Condition;
use dma::pipelines::DiffusionModel;
use dma::schedulers::ddim::DdimScheduler;
use dma::training::diffusion::noise_prediction_loss;
use dma::weights::read_safetensors;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn tiny(kind: Kind) -> DiffusionModel {
    dma::loaders::load_folder(&fixture("tiny-sd1"), Device::Cpu, kind).unwrap()
}

fn tiny_dit(kind: Kind) -> DiffusionModel {
    dma::loaders::load_folder(&fixture("tiny-dit"), Device::Cpu, kind).unwrap()
}

fn embedded_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/embedded")
}

/// The UNet with and without a LoRA against diffusers', relative to the output's largest magnitude: the tolerance
/// of tests/unet_parity.rs (3e-5, float32 rounding on another CPU or BLAS), the LoRA adding one rank-1 product per
/// attention projection.
const UNET_RTOL: f64 = 3e-5;
/// The text encoder's, as in tests/clip_parity.rs (1e-5): the learned row is only another input embedding.
const TEXT_RTOL: f64 = 1e-5;

/// The tiny UNet's output before and with `lora` (the fixture's when None), against diffusers'; the model is left
/// without it.
fn lora_parity(lora: Option<Lora>) -> [Closeness; 2] {
    let refs = references("adapters");
    let mut model = tiny(Kind::Float);
    let forward = |model: &DiffusionModel| {
        tch::no_grad(|| common::unet_of(model).forward(&refs["unet_sample"], &refs["unet_timesteps"], &refs["unet_context"], None, None).sample)
    };
    let base = forward(&model);
    let adapter = match lora {
        Some(lora) => Adapter::Lora(lora),
        None => Adapter::read(&fixture("adapters/lora/pytorch_lora_weights.safetensors")).unwrap(),
    };
    assert_eq!(adapter.kind(), AdapterKind::Lora);
    adapter.apply(&mut model).unwrap();
    let with_lora = forward(&model);
    dma::adapters::lora::remove(&mut model);
    // Removing the LoRA drops its branch: the remaining ops are the base model's, in the same order.
    assert!(forward(&model).equal(&base), "removing the LoRA restores the model exactly");
    [
        closeness("tiny UNet without the LoRA", &base, &refs["unet_out_base"], UNET_RTOL, 0.0),
        closeness("tiny UNet with the LoRA", &with_lora, &refs["unet_out_lora"], UNET_RTOL, 0.0),
    ]
}

/// The text encoder's output for the fixture's prompt with `ti` (the fixture's when None) against diffusers'.
fn ti_parity(ti: Option<TextualInversion>) -> Closeness {
    let refs = references("adapters");
    let json = common::reference_json("adapters");
    let mut model = tiny(Kind::Float);
    let adapter = match ti {
        Some(ti) => Adapter::TextualInversion(ti),
        None => Adapter::read(&fixture("adapters/ti/learned_embeds.safetensors")).unwrap(),
    };
    assert_eq!(adapter.kind(), AdapterKind::Ti);
    let prompt = json["prompt"].as_str().unwrap();
    adapter.check_prompt(prompt).unwrap();
    adapter.apply(&mut model).unwrap();
    let ids = model.text_encoders("the test").unwrap()[0].0.encode(prompt).unwrap();
    assert_eq!(Tensor::from_slice(&ids).unsqueeze(0), refs["ti_ids"], "token ids with the added token");
    let hidden = common::text_condition(&model, prompt);
    closeness("text encoder output with the learned token", &hidden, &refs["ti_hidden"], TEXT_RTOL, 0.0)
}

#[test]
fn a_peft_lora_from_diffusers_changes_the_unet_as_diffusers_does() {
    let refs = references("adapters");
    let change = max_abs_diff(&refs["unet_out_lora"], &refs["unet_out_base"]);
    println!("the fixture's LoRA changes the output by up to {change:.3}");
    assert!(change > 0.1, "the fixture's LoRA should change the output visibly");
    let [base, with_lora] = lora_parity(None);
    base.check();
    with_lora.check();
}

#[test]
fn a_textual_inversion_file_from_diffusers_conditions_as_diffusers_does() {
    ti_parity(None).check();
}

/// The tolerances still catch a slightly wrong adapter: every LoRA update 1% too large (a wrong alpha / rank
/// scale) or the learned embedding 1% too large fails by orders of magnitude (BENCHMARKS.md, "Parity tests:
/// tolerances and margins").
#[test]
fn an_adapter_one_percent_off_fails_its_parity_by_orders_of_magnitude() {
    let Adapter::Lora(mut lora) = Adapter::read(&fixture("adapters/lora/pytorch_lora_weights.safetensors")).unwrap() else {
        panic!("the fixture's LoRA reads as another kind")
    };
    for layer in lora.layers.values_mut() {
        layer.up = &layer.up * 1.01;
    }
    let [base, with_lora] = lora_parity(Some(lora));
    base.check();
    assert_caught("every LoRA update x 1.01", &with_lora, 100.0);
    let Adapter::TextualInversion(ti) = Adapter::read(&fixture("adapters/ti/learned_embeds.safetensors")).unwrap() else {
        panic!("the fixture's embedding reads as another kind")
    };
    let ti = TextualInversion { embeddings: vec![&ti.embeddings[0] * 1.01], ..ti };
    assert_caught("the learned embedding x 1.01", &ti_parity(Some(ti)), 100.0);
}

#[test]
fn written_adapters_have_the_fixture_key_names_and_read_back() {
    // LoRA's initialisation draws from libtorch's global generator, which the gradient checks reseed.
    let _rng = common::global_rng();
    let mut model = tiny(Kind::Float);
    let dir = tempfile::tempdir().unwrap();
    let lora = Adapter::Lora(Lora::init(&mut model, 1, 3));
    let written = lora.write_into(dir.path()).unwrap();
    let keys = |path: &std::path::Path| -> BTreeMap<String, Vec<i64>> {
        read_safetensors(path).unwrap().into_iter().map(|(k, t)| (k, t.size())).collect()
    };
    assert_eq!(keys(&written), keys(&fixture("adapters/lora/pytorch_lora_weights.safetensors")), "key names and shapes as diffusers/peft save them");
    let Adapter::Lora(read) = Adapter::read(&written).unwrap() else { panic!("read back as another kind") };
    let Adapter::Lora(original) = &lora else { unreachable!() };
    // Written and read back: the same float32 bits.
    for (module, layer) in &original.layers {
        assert!(max_abs_diff(&layer.down, &read.layers[module].down) == 0.0 && max_abs_diff(&layer.up, &read.layers[module].up) == 0.0);
    }

    let ti = Adapter::TextualInversion(TextualInversion { token: "<x-mode1>".into(), embeddings: vec![Tensor::randn([32], (Kind::Float, Device::Cpu))] });
    let written = ti.write_into(dir.path()).unwrap();
    assert_eq!(written.file_name().unwrap(), "learned_embeds.safetensors");
    assert_eq!(keys(&written), BTreeMap::from([("<x-mode1>".to_string(), vec![1, 32])]), "one [1, D] tensor named by its token, as diffusers saves");
}

#[test]
fn textual_inversion_gradient_matches_finite_differences() {
    let _rng = common::global_rng();
    let mut model = tiny(Kind::Double);
    let scheduler = DdimScheduler::new(&model.scheduler, 1).unwrap();
    tch::manual_seed(5);
    let row = (Tensor::randn([32], (Kind::Double, Device::Cpu)) * 0.1).set_requires_grad(true);
    model.add_token("<fd-token>", std::slice::from_ref(&row)).unwrap();
    let ids = Tensor::from_slice(&model.text_encoders("the test").unwrap()[0].0.encode("a photo of <fd-token>").unwrap()).unsqueeze(0);
    let x0 = Tensor::randn([2, 4, 16, 16], (Kind::Double, Device::Cpu));
    let loss = || {
        tch::manual_seed(9);
        let context = Condition::Text(model.text_encoders("the test").unwrap()[0].1.forward(&ids));
        noise_prediction_loss(&model.denoiser, &scheduler, &x0, &context).to_kind(Kind::Double)
    };
    // float64 central differences at step 1e-6: truncation ~1e-12, rounding ~1e-16 / 1e-6 of the loss, relative;
    // 1e-5 holds on any machine, and a wrong or missing term in the gradient is off by far more.
    check_gradient(&[row], &loss, 1e-6, 1e-5);
}

#[test]
fn lora_gradient_matches_finite_differences_and_trains_nothing_else() {
    let _rng = common::global_rng();
    let mut model = tiny(Kind::Double);
    let scheduler = DdimScheduler::new(&model.scheduler, 1).unwrap();
    tch::manual_seed(6);
    // Non-zero B, so the gradient of A is not trivially zero as at initialisation.
    let layers: BTreeMap<String, LoraLayer> = model
        .denoiser
        .attention_projections_mut()
        .into_iter()
        .map(|(path, linear)| {
            let down = (Tensor::randn([1, linear.in_features()], (Kind::Double, Device::Cpu)) * 0.3).set_requires_grad(true);
            let up = (Tensor::randn([linear.out_features(), 1], (Kind::Double, Device::Cpu)) * 0.3).set_requires_grad(true);
            (path, LoraLayer { down, up })
        })
        .collect();
    let lora = Lora { network: "unet".into(), layers };
    lora.apply(&mut model).unwrap();
    let params: Vec<Tensor> = lora.layers.values().flat_map(|l| [l.down.shallow_clone(), l.up.shallow_clone()]).collect();
    let context = model.condition("a photo of a dog").unwrap();
    let x0 = Tensor::randn([2, 4, 16, 16], (Kind::Double, Device::Cpu));
    let loss = || {
        tch::manual_seed(9);
        noise_prediction_loss(&model.denoiser, &scheduler, &x0, &context).to_kind(Kind::Double)
    };
    // As for Textual Inversion above: float64, 1e-5 relative.
    check_gradient(&params, &loss, 1e-6, 1e-5);
    loss().backward();
    assert!(params.iter().all(|p| p.grad().defined()), "every LoRA factor gets a gradient");
    assert!(!common::unet_of(&model).conv_in.weight.requires_grad(), "the UNet's own weights are not trained");
}

#[test]
fn a_textual_inversion_adapter_lowers_the_held_out_loss_of_its_mode() {
    let _rng = common::global_rng();
    let source = ModelSource::Folder(embedded_dir());
    let defaults = run_defaults(&source).unwrap();
    let mut model = dma::loaders::load(&source, Device::Cpu, Kind::Float).unwrap();
    // One mode of "footwear", sandals, drawn from the class prompt: 24 to learn from, 8 held out.
    let sandals = run(&model, &defaults.sampling("a sandal", 3), &seeded_latents(&model, 32, 3), None, 0, &|_| {}).unwrap().latents;
    let (trained, held) = (sandals.narrow(0, 0, 24), sandals.narrow(0, 24, 8));
    let base = mean_loss(&model, &held, "footwear", 77, 8).unwrap();
    let settings = AdapterTraining { kind: AdapterKind::Ti, steps: 150, lr: defaults.ti_lr, batch: 8, rank: 1, seed: 0 };
    let adapter = train(&mut model, &trained, "footwear", "<footwear-test>", &settings, &|_| {}, "adapter", &mut NoCheckpoints).unwrap();
    let adapted = mean_loss(&model, &held, &prompt_with_token("footwear", "<footwear-test>"), 77, 8).unwrap();
    println!("held-out sandals: loss {base:.4} with \"footwear\", {adapted:.4} with the learned token");
    assert!(adapted < base * 0.97, "the adapter should lower the held-out loss: {base} -> {adapted}");
    assert!(matches!(adapter, Adapter::TextualInversion(_)));
}

#[test]
fn adapters_for_another_model_or_prompt_are_refused_clearly() {
    let mut embedded = dma::loaders::load(&ModelSource::Folder(embedded_dir()), Device::Cpu, Kind::Float).unwrap();
    let lora = Adapter::read(&fixture("adapters/lora/pytorch_lora_weights.safetensors")).unwrap();
    let error = format!("{:#}", lora.apply(&mut embedded).unwrap_err());
    assert!(error.contains("another model"), "{error}");
    let ti = Adapter::read(&fixture("adapters/ti/learned_embeds.safetensors")).unwrap();
    let error = format!("{:#}", ti.apply(&mut embedded).unwrap_err());
    assert!(error.contains("[32]") && error.contains("[64]"), "a width mismatch names both widths: {error}");
    let error = format!("{:#}", ti.check_prompt("footwear").unwrap_err());
    assert!(error.contains("<tiny-mode0>"), "a prompt without the token names the token: {error}");
    let taken = TextualInversion { token: "sandal".into(), embeddings: vec![Tensor::zeros([64], (Kind::Float, Device::Cpu))] };
    let error = format!("{:#}", taken.apply(&mut embedded).unwrap_err());
    assert!(error.contains("already in the tokenizer's vocabulary"), "{error}");
}

/// The tiny DiT's output with and without the fixture's peft LoRA (`transformer.` keys) against diffusers + peft,
/// at tests/dit_parity.rs's tolerance; a LoRA written for the DiT has the fixture's keys; UNet and DiT LoRAs are
/// refused by the other family's model, naming both.
#[test]
fn a_peft_lora_on_a_dit_changes_the_transformer_as_peft_does_and_stays_with_its_family() {
    let refs: std::collections::HashMap<String, Tensor> = read_safetensors(&fixture("adapters/dit_reference.safetensors")).unwrap().into_iter().collect();
    let mut dit = dma::loaders::load_folder(&fixture("tiny-dit"), Device::Cpu, Kind::Float).unwrap();
    let forward = |model: &DiffusionModel| {
        let dma::models::denoiser::Network::DiT(network) = &model.denoiser.network else { panic!("the fixture is a DiT") };
        tch::no_grad(|| network.forward(&refs["sample"], &refs["timesteps"], &refs["class_labels"], None).sample)
    };
    let change = max_abs_diff(&refs["out_lora"], &refs["out_base"]);
    assert!(change > 0.1, "the fixture's LoRA should change the output visibly ({change})");
    let path = fixture("adapters/dit-lora/pytorch_lora_weights.safetensors");
    let lora = Adapter::read(&path).unwrap();
    closeness("tiny DiT without the LoRA", &forward(&dit), &refs["out_base"], 3e-5, 0.0).check();
    lora.apply(&mut dit).unwrap();
    closeness("tiny DiT with the LoRA", &forward(&dit), &refs["out_lora"], 3e-5, 0.0).check();

    let _rng = common::global_rng();
    let dir = tempfile::tempdir().unwrap();
    let written = Adapter::Lora(Lora::init(&mut dit, 1, 3)).write_into(dir.path()).unwrap();
    let keys = |path: &std::path::Path| -> BTreeMap<String, Vec<i64>> {
        read_safetensors(path).unwrap().into_iter().map(|(k, t)| (k, t.size())).collect()
    };
    assert_eq!(keys(&written), keys(&path), "a DiT LoRA's key names and shapes as peft's, under `transformer.`");
    let mut unet = tiny(Kind::Float);
    let error = format!("{:#}", lora.apply(&mut unet).unwrap_err());
    assert!(error.contains("`transformer`") && error.contains("`unet`") && error.contains("another model"), "{error}");
    let unet_lora = Adapter::read(&fixture("adapters/lora/pytorch_lora_weights.safetensors")).unwrap();
    let error = format!("{:#}", unet_lora.apply(&mut dit).unwrap_err());
    assert!(error.contains("`unet`") && error.contains("`transformer`") && error.contains("another model"), "{error}");
}

/// Keeps an adapter's training checkpoint in a folder after every step, as `dma modes` does, and fails at step
/// `stop_at` as a killed run would.
struct StopAt {
    dir: PathBuf,
    stop_at: Option<usize>,
    /// The steps trained in this run.
    steps: Vec<usize>,
}

impl Checkpoints for StopAt {
    fn sampling_start(&self, _: &str, _: usize) -> anyhow::Result<Option<Start>> {
        Ok(None)
    }
    fn after_sampling_step(&mut self, _: &str, _: StepState) -> anyhow::Result<()> {
        Ok(())
    }
    fn training_start(&self, _: &str, settings: &serde_json::Value) -> anyhow::Result<Resume> {
        Resume::open(&self.dir, settings)
    }
    fn after_training_step(&mut self, _: &str, state: &TrainingState) -> anyhow::Result<()> {
        self.steps.push(state.step);
        checkpoint::save(&self.dir, state.step, state.settings, state.params, state.optimizer, Vec::new())?;
        anyhow::ensure!(self.stop_at != Some(state.step), "stopped at step {}", state.step);
        Ok(())
    }
}

/// A class embedding is a class like the others: started at class 3's rows it conditions exactly as class 3 (the
/// null class keeps its id), its gradient matches finite differences, training it on one kind of image lowers the
/// held-out loss against the class it started from, and its file reads back to the same conditioning.
#[test]
fn a_learned_class_embedding_conditions_as_a_class_and_learns_its_mode() {
    let _rng = common::global_rng();
    let mut dit = tiny_dit(Kind::Float);
    let start = dit.class_prompt(3).unwrap();
    let rows = dit.class_rows(&start).unwrap();
    assert_eq!(dit.add_class("<copy-of-3>", &rows).unwrap(), 1001, "added after the null class 1000");
    tch::manual_seed(1);
    let x = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[500i64, 20]);
    let predict = |model: &DiffusionModel, prompt: &str| tch::no_grad(|| model.denoiser.predict(&x, &t, &model.condition(prompt).unwrap().repeat(2)).noise);
    assert!(predict(&dit, "<copy-of-3>").equal(&predict(&dit, &start)), "a copy of class 3's rows conditions as class 3");
    assert!(!predict(&dit, "").equal(&predict(&dit, &start)), "the null class is still the null class");

    // The gradient the training follows, in f64.
    let mut model = tiny_dit(Kind::Double);
    let scheduler = DdimScheduler::new(&model.scheduler, 1).unwrap();
    let rows: Vec<Tensor> = model.class_rows(&start).unwrap().into_iter().map(|r| r.set_requires_grad(true)).collect();
    model.add_class("<fd-class>", &rows).unwrap();
    let x0 = Tensor::randn([2, 4, 8, 8], (Kind::Double, Device::Cpu));
    let condition = model.condition("<fd-class>").unwrap();
    let loss = || {
        tch::manual_seed(9);
        noise_prediction_loss(&model.denoiser, &scheduler, &x0, &condition.repeat(2)).to_kind(Kind::Double)
    };
    check_gradient(&rows, &loss, 1e-6, 1e-5);

    // A "mode" the model has never seen: smooth bright latents. 24 to learn from, 8 held out.
    let mut dit = tiny_dit(Kind::Float);
    let mode = (Tensor::randn([32, 4, 1, 1], (Kind::Float, Device::Cpu)) * 0.2 + 0.8).expand([32, 4, 8, 8], false).contiguous();
    let (trained, held) = (mode.narrow(0, 0, 24), mode.narrow(0, 24, 8));
    let base = mean_loss(&dit, &held, &start, 77, 16).unwrap();
    let settings = AdapterTraining { kind: AdapterKind::ClassEmbedding, steps: 100, lr: 1e-2, batch: 8, rank: 1, seed: 0 };
    let adapter = train(&mut dit, &trained, &start, "<bright-mode>", &settings, &|_| {}, "adapter", &mut NoCheckpoints).unwrap();
    let adapted = mean_loss(&dit, &held, "<bright-mode>", 77, 16).unwrap();
    println!("held-out loss: {base:.4} as class 3, {adapted:.4} as the learned class");
    assert!(adapted < base * 0.9, "the learned class should lower the held-out loss: {base} -> {adapted}");
    assert!(dit.class_rows(&start).unwrap().iter().zip(&tiny_dit(Kind::Float).class_rows(&start).unwrap()).all(|(a, b)| a.equal(b)), "class 3 itself is untouched");

    let dir = tempfile::tempdir().unwrap();
    let file = adapter.write_into(dir.path()).unwrap();
    assert_eq!(file.file_name().unwrap(), "learned_class.safetensors");
    let read = Adapter::read(&file).unwrap();
    assert_eq!(read.kind(), AdapterKind::ClassEmbedding);
    read.check_prompt("<BRIGHT-mode>").unwrap();
    let error = format!("{:#}", read.check_prompt(&start).unwrap_err());
    assert!(error.contains("<bright-mode>"), "a prompt naming another class names the adapter's: {error}");
    let mut fresh = tiny_dit(Kind::Float);
    read.apply(&mut fresh).unwrap();
    assert!(predict(&fresh, "<bright-mode>").equal(&predict(&dit, "<bright-mode>")), "the file conditions as the trained class");
}

#[test]
fn class_embeddings_and_tokens_are_refused_by_the_other_family_and_by_other_shapes() {
    let rows = Tensor::zeros([2, 32], (Kind::Float, Device::Cpu));
    let class = ClassEmbedding { name: "<c>".into(), rows };
    let error = format!("{:#}", class.apply(&mut tiny(Kind::Float)).unwrap_err());
    assert!(error.contains("conditioned on text") && error.contains("Textual Inversion"), "{error}");
    let mut dit = tiny_dit(Kind::Float);
    let error = format!("{:#}", class.apply(&mut dit).unwrap_err());
    assert!(error.contains("2 rows") && error.contains("blocks"), "a block count mismatch says so: {error}");
    let error = format!("{:#}", AdapterKind::Ti.check_fits(&dit).unwrap_err());
    assert!(error.contains("class-embedding"), "TI on a DiT points to its analogue: {error}");
    assert!(AdapterKind::ClassEmbedding.check_fits(&tiny(Kind::Float)).is_err() && AdapterKind::Lora.check_fits(&dit).is_ok());
    let taken = ClassEmbedding { name: dit.class_prompt(3).unwrap(), rows: Tensor::stack(&dit.class_rows("class 3").unwrap(), 0) };
    let error = format!("{:#}", taken.apply(&mut dit).unwrap_err());
    assert!(error.contains("is taken by class 3"), "{error}");
}

/// The learned tensors of an adapter, by name.
fn learned(adapter: &Adapter) -> Vec<(String, Tensor)> {
    match adapter {
        Adapter::TextualInversion(ti) => ti.embeddings.iter().enumerate().map(|(i, e)| (format!("{}.{i}", ti.token), e.shallow_clone())).collect(),
        Adapter::ClassEmbedding(class) => vec![(class.name.clone(), class.rows.shallow_clone())],
        Adapter::Lora(lora) => lora.layers.iter().flat_map(|(m, l)| [(format!("{m}.A"), l.down.shallow_clone()), (format!("{m}.B"), l.up.shallow_clone())]).collect(),
    }
}

#[test]
fn adapter_training_stopped_midway_resumes_to_exactly_the_uninterrupted_result() {
    let _rng = common::global_rng();
    tch::manual_seed(5);
    let unet_samples = Tensor::randn([6, 4, 16, 16], (Kind::Float, Device::Cpu));
    let dit_samples = Tensor::randn([6, 4, 8, 8], (Kind::Float, Device::Cpu));
    for kind in [AdapterKind::Ti, AdapterKind::Lora, AdapterKind::ClassEmbedding] {
        let (tiny, samples, prompt): (fn(Kind) -> DiffusionModel, _, _) = match kind {
            AdapterKind::ClassEmbedding => (tiny_dit, &dit_samples, "class 3"),
            _ => (tiny, &unet_samples, "a photo of a dog"),
        };
        let settings = AdapterTraining { kind, steps: 6, lr: 1e-2, batch: 2, rank: 1, seed: 3 };
        let tmp = tempfile::tempdir().unwrap();
        let token = "<resume-test>";
        let trained = |stop_at: Option<usize>, dir: &str| {
            let mut model = tiny(Kind::Float);
            let mut checkpoints = StopAt { dir: tmp.path().join(dir), stop_at, steps: Vec::new() };
            let adapter = train(&mut model, samples, prompt, token, &settings, &|_| {}, "adapter", &mut checkpoints);
            (adapter, checkpoints.steps)
        };
        let whole = trained(None, "whole").0.unwrap();
        let error = trained(Some(3), "stopped").0.err().expect("the run stops at step 3");
        assert!(format!("{error:#}").contains("stopped at step 3"), "{error:#}");
        let (resumed, steps) = trained(None, "stopped");
        assert_eq!(steps, [4, 5, 6], "the resumed run trains only the steps left");
        let resumed = resumed.unwrap();
        let (a, b) = (learned(&whole), learned(&resumed));
        assert_eq!(a.len(), b.len());
        // Exact: the resumed steps run the same ops in the same order on the same machine, from a checkpoint that
        // restores the whole training state bit for bit.
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x.equal(y), "{kind:?} `{name}` differs after resuming (max {})", max_abs_diff(x, y));
        }
        let fresh = learned(&train(&mut tiny(Kind::Float), samples, prompt, token, &settings, &|_| {}, "adapter", &mut NoCheckpoints).unwrap());
        assert!(fresh.iter().zip(&a).all(|((_, x), (_, y))| x.equal(y)), "{kind:?}: checkpointing changes nothing");
        // A different setting is another training run, and its checkpoint is refused.
        let other = AdapterTraining { lr: 2e-2, ..settings.clone() };
        let mut model = tiny(Kind::Float);
        let refused = train(&mut model, samples, prompt, token, &other, &|_| {}, "adapter", &mut StopAt { dir: tmp.path().join("stopped"), stop_at: None, steps: Vec::new() });
        assert!(format!("{:#}", refused.err().unwrap()).contains("other settings"));
    }
}

/// SDXL embeddings as they are shared: `clip_l` and `clip_g`, the token from the metadata or else the file's stem
/// (A1111 and ComfyUI name an embedding by its file); multi-vector embeddings and half files refused by name.
#[test]
fn sdxl_embedding_files_are_read_or_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, tensors: &[(&str, Tensor)]| {
        let path = tmp.path().join(name);
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
        dma::weights::write_safetensors(&path, &named).unwrap();
        path
    };
    let row = |n: i64, d: i64| Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let Adapter::TextualInversion(ti) = Adapter::read(&write("unaestheticXL.safetensors", &[("clip_l", row(1, 32)), ("clip_g", row(1, 40))])).unwrap() else { panic!() };
    assert_eq!((ti.token.as_str(), ti.embeddings.len()), ("unaestheticXL", 2));
    let error = format!("{:#}", Adapter::read(&write("multi.safetensors", &[("clip_l", row(4, 32)), ("clip_g", row(4, 40))])).err().unwrap());
    assert!(error.contains("4 vectors") && error.contains("clip_l"), "{error}");
    let error = format!("{:#}", Adapter::read(&write("half.safetensors", &[("clip_l", row(1, 32))])).err().unwrap());
    assert!(error.contains("`clip_g` is missing"), "{error}");
    // An SD 1.x embedding on SDXL, and an SDXL one on SD 1.x: the widths say which model each was learned for.
    let mut sdxl = dma::loaders::load_folder(&fixture("tiny-sdxl"), Device::Cpu, Kind::Float).unwrap();
    let sd1_embedding = Adapter::read(&fixture("adapters/ti/learned_embeds.safetensors")).unwrap();
    let error = format!("{:#}", sd1_embedding.apply(&mut sdxl).unwrap_err());
    assert!(error.contains("[[32]]") && error.contains("[[32], [40]]"), "{error}");
    let mut sd1 = tiny(Kind::Float);
    let error = format!("{:#}", Adapter::TextualInversion(ti).apply(&mut sd1).unwrap_err());
    assert!(error.contains("another model"), "{error}");
}
