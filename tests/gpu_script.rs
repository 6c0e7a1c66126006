//! bench/gpu.sh, the GPU check, on the path this machine has: its syntax, and a quick run on the CPU, where the
//! device agrees with the CPU exactly and every table is printed.
use std::process::Command;

#[test]
fn the_gpu_check_parses_and_runs_on_the_cpu() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/gpu.sh");
    let syntax = Command::new("bash").args(["-n", script]).output().unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
    let out = tempfile::tempdir().unwrap();
    // `cargo test` (scripts/test.sh) has built the examples; building them again from inside a test would wait on
    // this build's lock. (`cargo test --test gpu_script` alone builds no examples: build them first, or it runs stale
    // ones.)
    let output = Command::new(script).args(["--device", "cpu", "--quick"]).env("DMA_GPU_PREBUILT", "1").env("OUT", out.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    // Three text models x six parts, the DiT's five (no text encoder), SDXL's seven (two text outputs) and the three
    // judges, each agreeing: on the CPU against itself, exactly.
    assert_eq!(stdout.matches("| 0.000e0 | ").count(), 33, "{stdout}");
    assert_eq!(stdout.matches("| yes |").count(), 33, "{stdout}");
    assert!(stdout.contains("| tiny-sdxl | pooled projection |") && stdout.contains("| judges | DreamSim embeddings |"), "{stdout}");
    assert!(stdout.contains("| tiny-dit | DiT output |"), "{stdout}");
    assert!(!stdout.contains("| NO |"));
    for dtype in ["f32", "bf16", "f16"] {
        assert!(stdout.contains(&format!("| {dtype} | 2 |")), "throughput of {dtype} at batch 2: {stdout}");
    }
    assert!(stdout.contains("One DMA run at the defaults") && stdout.contains("encoder_backward"), "{stdout}");
    assert!(stdout.contains("## 4. Half-precision") && stdout.matches("\"cosine_vs_f32\"").count() == 2, "f16 and bf16 at SDXL's (tiny) size: {stdout}");
    let report = std::fs::read_to_string(out.path().join("gpu-check.txt")).unwrap();
    assert!(report.contains("## 1. The device against the CPU") && report.contains("One DMA run"), "{report}");
}
