//! Runs across MPI ranks (issue "Beyond one machine"): `dma average` and `dma sample` under `mpirun -np 2` and
//! `-np 3` write byte-equal outputs to one process's; a rank killed mid-run ends the job with the last checkpoint
//! intact, and it resumes on another number of ranks to the uninterrupted result; bad input is one error, from
//! rank 0, with nothing written. A build without the `mpi` feature refuses to be one of several processes.
//!
//! Every process runs one thread (OMP_NUM_THREADS=1): bit-identical results are promised for the same device type
//! and threads per process. scripts/test.sh runs this file in a build with `--features mpi`, with Open MPI.
mod common;
use common::fixture;
use std::path::Path;
use std::process::Command;

/// `mpirun` with what a root CI container and more ranks than cores need.
fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut command = Command::new("mpirun");
    command.args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string(), env!("CARGO_BIN_EXE_dma")]).args(args).env("OMP_NUM_THREADS", "1");
    command
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A small mental average on the tiny fixture: 12 latents in blocks of 2 (6 blocks over 2 or 3 ranks), the first 5
/// optimised (the boundary falls inside a block) toward a first target from all 12; `extra` changes flags' values.
fn average_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let model = fixture("tiny-sd1");
    let mut args = strings(&[
        "average", "--model", model.to_str().unwrap(), "--prompt", "a photo of a dog", "--latents", "12", "--batch", "2", "--steps", "8",
        "--align-steps", "4", "--iters", "6", "--later-iters", "3", "--tol", "0", "--optimise", "5", "--wide-target-steps", "1",
        "--save-latents", "--quiet", "--out", out.to_str().unwrap(),
    ]);
    // `extra` holds flag-value pairs, each replacing the flag's value above.
    for pair in extra.chunks(2) {
        let at = args.iter().position(|a| a == pair[0]).expect("a flag of the base arguments");
        args[at + 1] = pair[1].to_string();
    }
    args
}

/// The runs across ranks, in a build with MPI.
#[cfg(feature = "mpi")]
mod across_ranks {
    use super::*;
    use common::{read_json, without_seconds};
    use std::process::Output;

    fn one_process(args: &[String]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dma")).args(args).env("OMP_NUM_THREADS", "1").output().unwrap()
    }

    fn succeeded(output: Output) -> Output {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        output
    }

    /// The files of a finished `average` or `sample` run that must be the same bytes whatever the number of ranks.
    fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap() != "run.json").collect();
        files.sort();
        files
            .iter()
            .flat_map(|p| if p.is_dir() { std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>() } else { vec![p.clone()] })
            .map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()))
            .collect()
    }

    /// run.json's per-step log without the seconds each step took, and the counted passes.
    fn computed(dir: &Path) -> (serde_json::Value, serde_json::Value) {
        let mut record = read_json(&dir.join("run.json"));
        for step in record["steps"].as_array_mut().unwrap() {
            step.as_object_mut().unwrap().remove("seconds");
        }
        (record["steps"].clone(), record["passes"].clone())
    }

    fn assert_same_run(one: &Path, other: &Path, what: &str) {
        let (a, b) = (outputs(one), outputs(other));
        assert_eq!(a.iter().map(|(n, _)| n).collect::<Vec<_>>(), b.iter().map(|(n, _)| n).collect::<Vec<_>>(), "{what}: the same files");
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x == y, "{what}: {name} differs from one process's");
        }
        assert_eq!(computed(one), computed(other), "{what}: the same alignment log and passes");
    }

    #[test]
    fn average_and_sample_on_two_and_three_ranks_give_one_process_s_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let alone = tmp.path().join("one");
        succeeded(one_process(&average_args(&alone, &[])));
        for ranks in [2, 3] {
            let out = tmp.path().join(format!("ranks-{ranks}"));
            succeeded(mpirun(ranks, &average_args(&out, &[])).output().unwrap());
            assert_same_run(&alone, &out, &format!("average on {ranks} ranks"));
            let record = read_json(&out.join("run.json"));
            let hosts = record["ranks"].as_array().unwrap();
            assert_eq!(hosts.len(), ranks, "run.json records every rank");
            assert!(hosts.iter().enumerate().all(|(i, r)| r["rank"] == i && r["host"].is_string() && r["device"] == "cpu"), "{hosts:?}");
        }
        let sample = |out: &Path| {
            let model = fixture("tiny-sd1");
            strings(&["sample", "--model", model.to_str().unwrap(), "--prompt", "a photo of a dog", "--num", "7", "--batch", "2", "--steps", "5", "--quiet", "--out", out.to_str().unwrap()])
        };
        let (alone, spread) = (tmp.path().join("sample-one"), tmp.path().join("sample-three"));
        succeeded(one_process(&sample(&alone)));
        succeeded(mpirun(3, &sample(&spread)).output().unwrap());
        assert_same_run(&alone, &spread, "sample on 3 ranks");
    }

    /// A `dma eval` of two concepts over three seeds on the tiny fixture: six items (a concept's seed each).
    fn eval_args(out: &Path) -> Vec<String> {
        let (model, clip) = (fixture("tiny-sd1"), fixture("tiny-clip"));
        strings(&[
            "eval", "--model", model.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog", "--prompt", "a photo of a cat",
            "--seeds", "3", "--samples", "4", "--steps", "6", "--latents", "2", "--align-steps", "4", "--iters", "20", "--tol", "0", "--quiet",
            "--out", out.to_str().unwrap(),
        ])
    }

    /// Every file of a run, in its subfolders too (run.json and results.json aside), is the same bytes.
    fn assert_same_files(one: &Path, other: &Path, what: &str) {
        fn files(dir: &Path, under: &Path, into: &mut Vec<(String, Vec<u8>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for path in entries {
                let name = path.strip_prefix(under).unwrap().display().to_string();
                if path.is_dir() {
                    files(&path, under, into);
                } else if name != "run.json" && name != "results.json" {
                    into.push((name, std::fs::read(&path).unwrap()));
                }
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        files(one, one, &mut a);
        files(other, other, &mut b);
        assert_eq!(a.iter().map(|(n, _)| n).collect::<Vec<_>>(), b.iter().map(|(n, _)| n).collect::<Vec<_>>(), "{what}: the same files");
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x == y, "{what}: {name} differs from one process's");
        }
    }

    /// `assert_same_files` for an `eval` or `compare` run, whose results.json says the same but for seconds.
    fn assert_same_results(one: &Path, other: &Path, what: &str) {
        assert_same_files(one, other, what);
        let (x, y) = (read_json(&one.join("results.json")), read_json(&other.join("results.json")));
        assert_eq!(without_seconds(&x), without_seconds(&y), "{what}: results.json");
    }

    #[test]
    fn eval_compare_and_sweep_on_two_and_three_ranks_give_one_process_s_results() {
        let tmp = tempfile::tempdir().unwrap();
        let alone = tmp.path().join("eval-one");
        succeeded(one_process(&eval_args(&alone)));
        for ranks in [2, 3] {
            let out = tmp.path().join(format!("eval-{ranks}"));
            let mut job = mpirun(ranks, &eval_args(&out));
            if ranks == 3 {
                // Messages cut into pieces of 332 bytes a rank (an item is some 100 KB): what a round of SD-size items
                // (hundreds of MB a rank, past MPI's 32-bit counts) goes through.
                job.env("DMA_MPI_BYTES_PER_CALL", "1000");
            }
            succeeded(job.output().unwrap());
            assert_same_results(&alone, &out, &format!("eval on {ranks} ranks"));
            assert_eq!(read_json(&out.join("run.json"))["ranks"].as_array().unwrap().len(), ranks, "run.json records every rank");
        }
        let compare = |out: &Path| {
            let models = format!("{},{}", fixture("tiny-sd1").display(), fixture("tiny-sd2").display());
            let clip = fixture("tiny-clip");
            strings(&[
                "compare", "--models", &models, "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog", "--methods", "dma,typical", "--seeds", "3",
                "--samples", "4", "--steps", "6", "--latents", "2", "--align-steps", "4", "--iters", "8", "--quiet", "--out", out.to_str().unwrap(),
            ])
        };
        let (alone, spread) = (tmp.path().join("compare-one"), tmp.path().join("compare-two"));
        succeeded(one_process(&compare(&alone)));
        succeeded(mpirun(2, &compare(&spread)).output().unwrap());
        assert_same_results(&alone, &spread, "compare on 2 ranks");
        let sweep = |out: &Path| {
            strings(&[
                "sweep", "--schedule", "paper", "--prompt", "a sneaker", "--prompt", "a digit", "--steps", "4", "--align-steps", "2", "--tol", "0", "--seeds", "2",
                "--samples", "3", "--batch", "1", "--sweep", "latents=2,3", "--sweep", "iters=1,2", "--quiet", "--out", out.to_str().unwrap(),
            ])
        };
        let (alone, spread) = (tmp.path().join("sweep-one"), tmp.path().join("sweep-three"));
        succeeded(one_process(&sweep(&alone)));
        succeeded(mpirun(3, &sweep(&spread)).output().unwrap());
        // results.csv and results.md show the seconds each setting took; results.json holds everything else.
        for table in ["results.csv", "results.md", "report.html"] {
            std::fs::remove_file(alone.join(table)).unwrap();
            std::fs::remove_file(spread.join(table)).unwrap();
        }
        assert_same_results(&alone, &spread, "sweep on 3 ranks");
    }

    #[test]
    fn modes_with_their_prototypes_on_two_and_three_ranks_give_one_process_s_files() {
        let tmp = tempfile::tempdir().unwrap();
        let modes = |out: &Path, kind: &str| {
            let (model, clip) = (fixture("tiny-sd1"), fixture("tiny-clip"));
            strings(&[
                "modes", "--model", model.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog", "--samples", "12", "--batch", "2",
                "--steps", "3", "--clusters", "3", "--average", "--adapter-kind", kind, "--adapter-steps", "4", "--adapter-batch", "2", "--latents", "6",
                "--align-steps", "1", "--iters", "3", "--save-latents", "--quiet", "--out", out.to_str().unwrap(),
            ])
        };
        for (kind, ranks) in [("lora", 2), ("ti", 3)] {
            let (alone, spread) = (tmp.path().join(format!("{kind}-one")), tmp.path().join(format!("{kind}-{ranks}")));
            succeeded(one_process(&modes(&alone, kind)));
            succeeded(mpirun(ranks, &modes(&spread, kind)).output().unwrap());
            assert_same_files(&alone, &spread, &format!("modes --average with {kind} on {ranks} ranks"));
            let record = |dir: &Path| without_seconds(&read_json(&dir.join("run.json"))["chain"]);
            assert_eq!(record(&alone), record(&spread), "{kind}: the chain's record");
        }
    }

    #[test]
    fn an_eval_stopped_on_three_ranks_resumes_on_two_to_one_process_s_results() {
        let tmp = tempfile::tempdir().unwrap();
        let (reference, out) = (tmp.path().join("reference"), tmp.path().join("stopped"));
        succeeded(one_process(&eval_args(&reference)));
        let job = mpirun(3, &eval_args(&out)).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // The first round's three items are kept by rank 0 as they arrive; the second round is then under way.
        let stages = tmp.path().join(".stopped.partial/checkpoints");
        // Table 1's protocol: the samples take --seed 0, the repetitions seeds 1 to 3.
        let kept = || (0..2).flat_map(|s| (1..4).map(move |seed| format!("subject-{s}/seed-{seed}/outcome.safetensors"))).filter(|f| stages.join(f).is_file()).count();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        while kept() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(Command::new("kill").args(["-INT", &job.id().to_string()]).status().unwrap().success());
        let ended = job.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&ended.stderr);
        assert!(!ended.status.success() && !out.exists(), "{stderr}");
        assert_eq!(stderr.matches("stopped by").count(), 1, "said once, by rank 0: {stderr}");
        let finished = kept();
        assert!((1..6).contains(&finished), "stopped with some items kept and some to do ({finished} of 6 kept): {stderr}");
        succeeded(mpirun(2, &strings(&["eval", "--resume", out.to_str().unwrap(), "--quiet"])).output().unwrap());
        assert_same_results(&reference, &out, "eval stopped on 3 ranks, resumed on 2");
    }

    /// The pid of the process of rank `rank` that `mpirun` started with `marker` in its arguments.
    fn rank_pid(rank: usize, marker: &str) -> Option<u32> {
        std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let has = |bytes: &[u8], text: &str| bytes.windows(text.len()).any(|w| w == text.as_bytes());
            has(&cmdline, marker) && has(&environ, &format!("OMPI_COMM_WORLD_RANK={rank}\0"))
        })
    }

    #[test]
    fn a_rank_killed_mid_run_ends_the_job_and_its_checkpoint_resumes_on_other_ranks() {
        let tmp = tempfile::tempdir().unwrap();
        // Slow enough to be caught mid-way: 12 steps, 8 aligned, 20 iterations each.
        let slow = ["--steps", "12", "--align-steps", "8", "--iters", "20", "--later-iters", "20"];
        let reference = tmp.path().join("reference");
        succeeded(one_process(&average_args(&reference, &slow)));
        let out = tmp.path().join("killed");
        let job = mpirun(2, &average_args(&out, &slow)).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let staging = tmp.path().join(".killed.partial");
        let record = staging.join("checkpoints/average/checkpoint.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let reached = loop {
            let step = std::fs::read_to_string(&record).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).and_then(|v| v["next_step"].as_u64());
            if step.is_some_and(|s| s >= 2) || std::time::Instant::now() > deadline {
                break step;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(reached.is_some_and(|s| s < 12), "the run was caught mid-way (at {reached:?})");
        let victim = rank_pid(1, out.to_str().unwrap()).expect("rank 1's process");
        assert!(Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap().success());
        let ended = job.wait_with_output().unwrap();
        assert!(!ended.status.success(), "the job ends with an error when a rank dies");
        assert!(!out.exists() && staging.join("resume.json").is_file(), "nothing in --out; the checkpoint kept");
        // On three ranks now.
        let resume = strings(&["average", "--resume", out.to_str().unwrap(), "--quiet"]);
        succeeded(mpirun(3, &resume).output().unwrap());
        for name in ["prototype.png", "grid.png", "trajectory.png", "latents.safetensors"] {
            assert!(std::fs::read(out.join(name)).unwrap() == std::fs::read(reference.join(name)).unwrap(), "{name}: resumed on 3 ranks = uninterrupted on one");
        }
    }

    #[test]
    fn ctrl_c_on_mpirun_stops_every_rank_with_one_message_and_the_checkpoint_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let slow = ["--steps", "12", "--align-steps", "8", "--iters", "20", "--later-iters", "20"];
        let (reference, out) = (tmp.path().join("reference"), tmp.path().join("stopped"));
        succeeded(one_process(&average_args(&reference, &slow)));
        let job = mpirun(2, &average_args(&out, &slow)).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let record = tmp.path().join(".stopped.partial/checkpoints/average/checkpoint.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        while !record.is_file() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Ctrl-C in the terminal reaches mpirun, which passes SIGTERM on to every rank.
        assert!(Command::new("kill").args(["-INT", &job.id().to_string()]).status().unwrap().success());
        let ended = job.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&ended.stderr);
        assert!(!ended.status.success(), "{stderr}");
        assert_eq!(stderr.matches("stopped by").count(), 1, "said once, by rank 0: {stderr}");
        assert!(stderr.contains(&format!("dma average --resume {}", out.display())), "{stderr}");
        succeeded(one_process(&strings(&["average", "--resume", out.to_str().unwrap(), "--quiet"])));
        for name in ["prototype.png", "latents.safetensors"] {
            assert!(std::fs::read(out.join(name)).unwrap() == std::fs::read(reference.join(name)).unwrap(), "{name}: resumed = uninterrupted");
        }
    }

    #[test]
    fn bad_input_on_ranks_is_one_error_from_rank_0_and_nothing_written() {
        let tmp = tempfile::tempdir().unwrap();
        let refused = |output: Output, expect: &str| {
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(!output.status.success(), "refused: {stderr}");
            assert!(stderr.contains(expect), "says {expect:?}: {stderr}");
            assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "one error, not one per rank: {stderr}");
            stderr
        };
        // Fewer blocks of latents than ranks: 3 latents in batches of 2 on 3 ranks.
        let out = tmp.path().join("few");
        refused(mpirun(3, &average_args(&out, &["--latents", "3", "--optimise", "3"])).output().unwrap(), "every rank needs one");
        assert!(!out.exists() && !tmp.path().join(".few.partial").exists(), "nothing written");
        // An --out rank 0 cannot write.
        let blocked = tmp.path().join("file");
        std::fs::write(&blocked, "not a folder").unwrap();
        refused(mpirun(2, &average_args(&blocked.join("out"), &[])).output().unwrap(), "out");
        // Ranks given different jobs (MPMD: rank 0 one prompt, rank 1 another).
        let (a, mut b) = (average_args(&tmp.path().join("mixed"), &[]), average_args(&tmp.path().join("mixed"), &[]));
        b[4] = "a photo of a cat".into();
        let mut mixed = Command::new("mpirun");
        mixed.args(["--allow-run-as-root", "--oversubscribe", "-np", "1", env!("CARGO_BIN_EXE_dma")]).args(&a).arg(":").args(["-np", "1", env!("CARGO_BIN_EXE_dma")]).args(&b).env("OMP_NUM_THREADS", "1");
        refused(mixed.output().unwrap(), "not given the same job");
        assert!(!tmp.path().join("mixed").exists() && !tmp.path().join(".mixed.partial").exists(), "nothing written");
        // The same command line, but `--model tiny-org/tiny-sd1` found in two Hugging Face caches whose files differ.
        let cache = |name: &str, model: &Path| {
            let repo = tmp.path().join(name).join("models--tiny-org--tiny-sd1");
            std::fs::create_dir_all(repo.join("refs")).unwrap();
            std::fs::create_dir_all(repo.join("snapshots")).unwrap();
            std::fs::write(repo.join("refs/main"), "0123abc").unwrap();
            std::os::unix::fs::symlink(model, repo.join("snapshots/0123abc")).unwrap();
            format!("HF_HUB_CACHE={}", tmp.path().join(name).display())
        };
        let edited = common::fixture_with_edited_tensor(&tmp.path().join("edited"), "tiny-sd1", "unet/diffusion_pytorch_model.safetensors", "conv_in.weight", |w| w * 1.01);
        let (a, b) = (cache("cache-a", &fixture("tiny-sd1")), cache("cache-b", &edited));
        let mut args = average_args(&tmp.path().join("two-models"), &[]);
        args[2] = "tiny-org/tiny-sd1".into();
        let mut two = Command::new("mpirun");
        two.args(["--allow-run-as-root", "--oversubscribe", "-np", "1", "env", &a, env!("CARGO_BIN_EXE_dma")]).args(&args);
        two.args([":", "-np", "1", "env", &b, env!("CARGO_BIN_EXE_dma")]).args(&args).env("OMP_NUM_THREADS", "1");
        refused(two.output().unwrap(), "model files with other hashes");
        assert!(!tmp.path().join("two-models").exists() && !tmp.path().join(".two-models.partial").exists(), "nothing written");
        // A warning every rank meets (a prompt longer than the text encoder reads) is said once, by rank 0.
        let model = fixture("tiny-sd1");
        let long = ["a photo of a dog"; 30].join(" and ");
        let out = tmp.path().join("long");
        let sample = strings(&["sample", "--model", model.to_str().unwrap(), "--prompt", &long, "--num", "4", "--batch", "2", "--steps", "1", "--quiet", "--out", out.to_str().unwrap()]);
        let said = succeeded(mpirun(2, &sample).output().unwrap());
        let stderr = String::from_utf8_lossy(&said.stderr);
        assert_eq!(stderr.matches("tokens long").count(), 1, "said once: {stderr}");
        // A command that does not run across ranks says so once.
        refused(mpirun(2, &strings(&["train", "--steps", "1"])).output().unwrap(), "does not run across MPI ranks");
    }
}

/// Without the feature, a process started as one of several by an MPI launcher refuses, instead of running the
/// same job once per process.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_be_one_of_several_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = average_args(&out, &[]);
    // Under a real mpirun where there is one; else as Open MPI's launcher tells its processes.
    let output = if Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success()) {
        mpirun(2, &args).output().unwrap()
    } else {
        Command::new(env!("CARGO_BIN_EXE_dma")).args(&args).env("OMPI_COMM_WORLD_SIZE", "2").env("OMPI_COMM_WORLD_RANK", "0").output().unwrap()
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("built without MPI") && stderr.contains("--features mpi"), "{stderr}");
    assert_eq!(stderr.matches("built without MPI").count(), 1, "said once, by the first process: {stderr}");
    assert!(!out.exists() && !tmp.path().join(".out.partial").exists(), "nothing written");
}
