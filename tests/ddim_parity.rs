//! The DDIM scheduler against diffusers' DDIMScheduler on the committed tiny SD 1- and SD 2-style fixtures.
mod common;
use common::{fixture, max_abs_diff, reference_json, references};
use dma::schedulers::ddim::{DdimConfig, DdimScheduler, PredictionType, TimestepSpacing};
use tch::{Kind, Tensor};

fn scheduler_config(name: &str) -> DdimConfig {
    DdimConfig::from_file(&fixture(name).join("scheduler").join("scheduler_config.json")).unwrap()
}

// SCRATCH: against /tmp/dma_ref (diffusers references made before the committed fixtures existed). Remove.
#[test]
fn scratch_against_tmp_refs() {
    use std::path::Path;
    let refs: std::collections::HashMap<_, _> =
        dma::weights::read_safetensors(Path::new("/tmp/dma_ref/refs.safetensors")).unwrap().into_iter().collect();
    let sched: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("/tmp/dma_ref/sched.json").unwrap()).unwrap();
    for (cname, entry) in sched.as_object().unwrap() {
        let cfg: DdimConfig = serde_json::from_value(entry["config"].clone()).unwrap();
        let ac: Vec<f64> = serde_json::from_value(entry["alphas_cumprod"].clone()).unwrap();
        let s = DdimScheduler::new(&cfg, 10).unwrap();
        let ac_diff = ac.iter().enumerate().map(|(t, a)| (a - s.alpha_cumprod(t as i64)).abs()).fold(0.0, f64::max);
        let mut mismatches = vec![];
        let mut errors = vec![];
        for (n, ts) in entry["timesteps"].as_object().unwrap() {
            let n: usize = n.parse().unwrap();
            let ts: Vec<i64> = serde_json::from_value(ts.clone()).unwrap();
            match DdimScheduler::new(&cfg, n) {
                Ok(s) => if s.timesteps() != &ts[..] { mismatches.push((n, ts.len(), s.timesteps().len())) },
                Err(e) => errors.push((n, format!("{e:#}"))),
            }
        }
        let mut max_prev: f64 = 0.0;
        let mut max_x0: f64 = 0.0;
        let mut max_noised: f64 = 0.0;
        for st in entry["steps"].as_array().unwrap() {
            let (n, t, key) = (st[0].as_u64().unwrap() as usize, st[1].as_i64().unwrap(), st[2].as_str().unwrap());
            let s = DdimScheduler::new(&cfg, n).unwrap();
            let r = |k: &str| &refs[&format!("{key}_{k}")];
            let out = s.step(r("mo"), t, r("x"));
            max_prev = max_prev.max(max_abs_diff(&out.prev_sample, r("prev")));
            max_x0 = max_x0.max(max_abs_diff(&out.pred_original_sample, r("x0")));
            max_noised = max_noised.max(max_abs_diff(&s.add_noise(r("x"), r("noise"), t), r("noised")));
        }
        println!("{cname}: ac diff {ac_diff:.2e}; step prev {max_prev:.2e} x0 {max_x0:.2e} add_noise {max_noised:.2e}; timestep mismatches {} {:?}; errors {} {:?}", mismatches.len(), &mismatches[..mismatches.len().min(5)], errors.len(), errors.first());
    }
    let _ = (PredictionType::Epsilon, TimestepSpacing::Leading, Kind::Float, Tensor::from(0), reference_json, references, scheduler_config);
}
