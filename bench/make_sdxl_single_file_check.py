#!/usr/bin/env python3
"""Builds a FULL-SIZE, random-weight SDXL base checkpoint in Stability's single-file layout, and diffusers' outputs
for it, so that a Rust program can check that dma's single-file loader, with its BUILT-IN configs
(assets/configs/sdxl/{unet,text_encoder,text_encoder_2,vae}/config.json), computes what diffusers computes.

Why: tests/fixtures/tiny-sdxl/ldm.safetensors checks the single-file mapping on a tiny model, and
tests/fixtures/sdxl-base-ldm-keys.json checks the full-size key map on the meta device (names and shapes only).
Neither runs the full-size networks with the built-in configs, where a wrong config value (heads, transformer depth
per level, the added-embedding width, the OpenCLIP text encoder's depth, activation or projection, ...) shows up
only as wrong numbers. This script gives the numbers. The Rust side is examples/check_single_file.rs: it loads
sdxl_base_random.safetensors with dma's built-in configs, feeds it the inputs stored in references.safetensors and
compares its outputs with the references stored there.

How to run (from the repository root; CPU only, 2 threads, no network; about 2.5 minutes, 11 GB of memory at peak
(ru_maxrss) and 7 GB of disk for the checkpoint; the random UNet folder is made once and reused):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 bench/make_random_network.py --network sdxl-unet && \
        python3 bench/make_sdxl_single_file_check.py [--out DIR] [--unet DIR]

It writes, into --out (default $DMA_CACHE/bench/sdxl-single-file-check, DMA_CACHE defaulting to ~/.cache/dma):

* sdxl_base_random.safetensors (about 6.9 GB)
    An SDXL base checkpoint in the layout of sd_xl_base_1.0.safetensors, every tensor float16:
      - the UNet (model.diffusion_model.*) = the random UNet folder made by bench/make_random_network.py --network
        sdxl-unet (diffusers format, float32, seed 0; its architecture must be the built-in config's, which is
        checked), rounded to float16;
      - text_encoder (conditioner.embedders.0.transformer.*) = transformers' CLIPTextModel built from
        assets/configs/sdxl/text_encoder/config.json with torch.manual_seed(TEXT_ENCODER_SEED), rounded to float16;
      - text_encoder_2 (conditioner.embedders.1.model.*, OpenCLIP naming, fused q/k/v, transposed text_projection)
        = CLIPTextModelWithProjection from assets/configs/sdxl/text_encoder_2/config.json, seed
        TEXT_ENCODER_2_SEED, rounded to float16;
      - the VAE (first_stage_model.*) = diffusers' AutoencoderKL from assets/configs/sdxl/vae/config.json, seed
        VAE_SEED, rounded to float16.
    The diffusers -> single-file mapping is scripts/make_sdxl_single_file_fixture.py's (sdxl_to_ldm, which uses
    scripts/make_fixtures.py's unet_to_ldm / vae_to_ldm / clip_to_ldm / open_clip_to_ldm), the one that fixture
    checks against diffusers' own conversion code. The file holds exactly the LDM keys of
    tests/fixtures/sdxl-base-ldm-keys.json's "entries", with their shapes (asserted), and so none of its
    "ignored_keys" (logit_scale, position_ids), which real files carry. After writing, every tensor is read back
    with the safetensors library and compared bit for bit with what was meant to be written.

* references.safetensors + references.json
    Computed in float32 on CPU, with torch.no_grad, by diffusers / transformers, from the float16 weights above cast
    to float32 (so the references come from exactly the stored values, and a loader that reads the file into
    float32 has the very same weights). Inputs are stored next to the outputs:
      - ids_1, ids_2: int64 [1, 77], fixed token ids (no tokenizer): "a photo of a cat" as SDXL's two tokenizers
        give it, [49406, 320, 1125, 539, 320, 2368, 49407] then padding: ids_1 pads with 49407 (CLIP ViT-L's
        tokenizer pads with <|endoftext|>), ids_2 with 0 (the bigG tokenizer pads with "!", id 0).
      - states [1, 77, 2048] = cat(text_encoder(ids_1).hidden_states[-2], text_encoder_2(ids_2).hidden_states[-2])
        along the last dim, and pooled [1, 1280] = text_encoder_2(ids_2).text_embeds: what
        StableDiffusionXLPipeline.encode_prompt does (penultimate layer, before the final layer norm; pooled from
        the projection of the final-layer-normed state at the EOS token; with eos_token_id 2 in the configs,
        transformers takes the EOS position as argmax(ids) = 6, the first 49407 - checked here by recomputing it).
      - UNet: unet_sample [1, 4, 32, 32] randn, timestep 500 (references.json "unet_timestep", and a float32 [1]
        tensor unet_timestep), encoder_hidden_states = unet_states (= states), added_cond_kwargs text_embeds =
        unet_text_embeds (= pooled) and time_ids = unet_time_ids [[256, 256, 0, 0, 256, 256]] float32 (original size,
        crop top-left, target size of a 256 px image, matching the 32x32 latent) -> unet_out [1, 4, 32, 32] (the
        noise prediction) and unet_mid [1, 1280, 8, 8] (the output of unet.mid_block, by a forward hook).
      - VAE: vae_latent [1, 4, 16, 16] randn -> vae_decoded [1, 3, 128, 128] = vae.decode(vae_latent).sample. NO
        scaling factor is applied (the pipeline divides latents by 0.13025 before decoding; here the latent goes to
        decode as it is), and no clamping or rescaling of the image.
    references.json describes every tensor (shape, dtype, role, max |value|, mean, std) and records the seeds, the
    configs, the library versions, the checkpoint's size and sha256, the run time and peak memory (ru_maxrss).

Memory: the work goes component by component. The UNet folder is read tensor by tensor with plain file reads (not
mmap, which would count the 10 GB file in the resident set) and rounded to float16 on the fly (5.1 GB), into a
UNet built on the meta device; the float16 models (6.9 GB) are written, then each model is cast to float32 in
place (parameter by parameter, so the UNet never exists in float32 twice), run, and freed.
"""

import argparse
import hashlib
import json
import os
import resource
import struct
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from make_sdxl_single_file_fixture import KEYS_JSON, SDXL_CONFIGS, sdxl_to_ldm, with_text_model_prefix  # noqa: E402

CACHE = Path(os.environ.get("DMA_CACHE", os.path.expanduser("~/.cache/dma"))) / "bench"
DEFAULT_OUT = CACHE / "sdxl-single-file-check"
DEFAULT_UNET = CACHE / "sdxl-random-unet"
CHECKPOINT = "sdxl_base_random.safetensors"

TEXT_ENCODER_SEED, TEXT_ENCODER_2_SEED, VAE_SEED, INPUT_SEED = 1, 2, 3, 4
PROMPT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # <|startoftext|> a photo of a cat <|endoftext|>
PAD_1, PAD_2 = 49407, 0
TIMESTEP = 500
TIME_IDS = [256.0, 256.0, 0.0, 0.0, 256.0, 256.0]
ST_DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2)}

START = time.time()
TIMES = {}


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def rss_gb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def log(msg):
    print(f"[sdxl-check {time.time() - START:6.0f} s, rss {rss_gb():5.1f} GB, peak {peak_gb():5.1f} GB] {msg}",
          flush=True)


def stage(name):
    TIMES[name] = {"end_s": round(time.time() - START, 1), "peak_rss_gb": round(peak_gb(), 2)}


def half_(model):
    """Rounds a model's floating-point weights to float16 in place; asserts they stay finite."""
    model.half()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float16 and torch.isfinite(v).all(), k
    return model


# ----------------------------------------------------------------------------------------------------------------
# The UNet: read the float32 folder tensor by tensor (plain reads, no mmap), float16 into a meta-built model
# ----------------------------------------------------------------------------------------------------------------


def read_safetensors_as_f16(path):
    """{key: float16 tensor} from a safetensors file, reading one tensor at a time with ordinary file reads."""
    out = {}
    with open(path, "rb", buffering=0) as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        base = 8 + n
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            dtype, size = ST_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            numel = 1
            for s in info["shape"]:
                numel *= s
            assert end - begin == numel * size, key
            buf = torch.empty(numel, dtype=dtype)
            view = memoryview(buf.view(torch.uint8).numpy())
            f.seek(base + begin)
            done = 0
            while done < len(view):
                got = f.readinto(view[done:])
                assert got, f"{path} ends inside {key}"
                done += got
            t = buf.reshape(info["shape"]).to(torch.float16)
            assert torch.isfinite(t).all(), f"{key} overflows float16"
            out[key] = t
            del buf, view
    return out


def load_unet_f16(folder):
    from diffusers import UNet2DConditionModel

    builtin = UNet2DConditionModel.load_config(str(SDXL_CONFIGS / "unet"))
    theirs = UNet2DConditionModel.load_config(str(folder))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(builtin)
        other = UNet2DConditionModel.from_config(theirs)
    mine = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    diff = {k: (v, other.config.get(k)) for k, v in mine.items() if other.config.get(k) != v}
    assert not diff, f"{folder} was not made with the built-in SDXL UNet config: {diff}"
    del other
    sd = read_safetensors_as_f16(Path(folder) / "diffusion_pytorch_model.safetensors")
    assert set(sd) == set(unet.state_dict()), sorted(set(sd) ^ set(unet.state_dict()))[:10]
    unet.load_state_dict(sd, strict=True, assign=True)
    del sd
    for k, v in list(unet.named_parameters()) + list(unet.named_buffers()):
        assert v.device.type == "cpu", f"{k} left on {v.device}"
    return unet.eval()


def build_small_models():
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(TEXT_ENCODER_SEED)
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(SDXL_CONFIGS / "text_encoder")))
    half_(te.eval())
    torch.manual_seed(TEXT_ENCODER_2_SEED)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(SDXL_CONFIGS / "text_encoder_2")))
    half_(te2.eval())
    torch.manual_seed(VAE_SEED)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(SDXL_CONFIGS / "vae")))
    half_(vae.eval())
    return {"text_encoder": te, "text_encoder_2": te2, "vae": vae}


# ----------------------------------------------------------------------------------------------------------------
# The single file
# ----------------------------------------------------------------------------------------------------------------


def write_checkpoint(models, path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    sds = {name: models[name].state_dict() for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    sds["text_encoder"] = with_text_model_prefix(sds["text_encoder"])
    sds["text_encoder_2"] = with_text_model_prefix(sds["text_encoder_2"])
    sds["vae_model"] = models["vae"]
    sds["text_encoder_2_config"] = models["text_encoder_2"].config
    mapped = sdxl_to_ldm(sds, models["unet"])
    del sds
    # Each model weight is used once (position_ids aside; open_clip_to_ldm's SD 2 extras are dropped by sdxl_to_ldm).
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        used = [part for c, src, _ in mapped.values() if c == name for part in src.split("+")]
        sd = models[name].state_dict()
        sd = with_text_model_prefix(sd) if name.startswith("text_encoder") else sd
        want = {k for k in sd if not k.endswith("position_ids")}
        assert len(used) == len(set(used)) and set(used) == want, (name, sorted(set(used) ^ want)[:10])

    keymap = json.loads(KEYS_JSON.read_text())
    entries = {k: (shape, component) for k, shape, component, _ in keymap["entries"]}
    assert set(mapped) == set(entries), ("vs sdxl-base-ldm-keys.json", "extra", sorted(set(mapped) - set(entries))[:10],
                                         "missing", sorted(set(entries) - set(mapped))[:10])
    tensors = {}
    for k, (component, _, v) in mapped.items():
        assert list(v.shape) == entries[k][0] and component == entries[k][1], (k, list(v.shape), entries[k])
        assert v.dtype == torch.float16, (k, v.dtype)
        tensors[k] = v.detach().contiguous()
    del mapped
    counts = {c: sum(1 for _, c2 in entries.values() if c2 == c) for c in ("unet", "vae", "text_encoder",
                                                                            "text_encoder_2")}
    log(f"writing {path}: {len(tensors)} float16 tensors {counts}")
    tmp = path.with_suffix(".safetensors.partial")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    os.chmod(path, 0o644)
    log(f"wrote {path}: {path.stat().st_size / 1e9:.2f} GB; reading it back with the safetensors library")

    # Read back with the safetensors library (reopening now and then: mmap'd pages count in the resident set while
    # the file is open).
    keys = sorted(tensors)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(keys)
        assert f.metadata() == {"format": "pt"}
    i = 0
    while i < len(keys):
        with safe_open(str(path), framework="pt") as f:
            budget = 0
            while i < len(keys) and budget < 5e8:
                k = keys[i]
                t = f.get_tensor(k)
                assert t.dtype == torch.float16 and torch.equal(t, tensors[k]), f"{k} reads back different"
                budget += t.numel() * 2
                i += 1
                del t
    log("  every tensor reads back bit-identical")
    del tensors
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            sha.update(chunk)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha.hexdigest(), "tensors": len(keys),
            "ldm_keys_per_component": counts, "dtype": "float16"}


# ----------------------------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------------------------


def text_references(models, ref):
    te, te2 = models["text_encoder"].float(), models["text_encoder_2"].float()
    ids_1 = torch.tensor([PROMPT_IDS + [PAD_1] * (77 - len(PROMPT_IDS))], dtype=torch.int64)
    ids_2 = torch.tensor([PROMPT_IDS + [PAD_2] * (77 - len(PROMPT_IDS))], dtype=torch.int64)
    out_1 = te(ids_1, output_hidden_states=True)
    assert len(out_1.hidden_states) == te.config.num_hidden_layers + 1
    out_2 = te2(ids_2, output_hidden_states=True)
    assert len(out_2.hidden_states) == te2.config.num_hidden_layers + 1
    states = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
    pooled = out_2.text_embeds
    # The pooled embedding is the projection of the final-layer-normed state at the EOS position (argmax of ids with
    # eos_token_id 2 in the config: index 6, the first 49407).
    eos = int(ids_2[0].argmax())
    assert eos == len(PROMPT_IDS) - 1, eos
    again = te2.text_projection(out_2.last_hidden_state[:, eos])
    assert torch.allclose(pooled, again, rtol=0, atol=1e-5), (pooled - again).abs().max()
    ref.update(ids_1=ids_1, ids_2=ids_2, states=states.contiguous(), pooled=pooled.contiguous())
    log(f"text encoders: states {list(states.shape)}, pooled {list(pooled.shape)} (EOS at {eos})")
    return eos


def vae_references(vae, ref):
    vae = vae.float()
    gen = torch.Generator().manual_seed(INPUT_SEED + 1)
    latent = torch.randn([1, 4, 16, 16], generator=gen)
    decoded = vae.decode(latent).sample
    ref.update(vae_latent=latent, vae_decoded=decoded.contiguous())
    log(f"vae: decoded {list(decoded.shape)}")


def unet_references(unet, ref):
    unet = unet.float()
    assert all(p.dtype == torch.float32 for p in unet.parameters())
    gen = torch.Generator().manual_seed(INPUT_SEED)
    sample = torch.randn([1, 4, 32, 32], generator=gen)
    timestep = torch.tensor([float(TIMESTEP)])
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32)
    mids = []
    hook = unet.mid_block.register_forward_hook(lambda _m, _i, o: mids.append(o.detach().clone()))
    t0 = time.time()
    out = unet(sample, timestep, encoder_hidden_states=ref["states"],
               added_cond_kwargs={"text_embeds": ref["pooled"], "time_ids": time_ids}).sample
    hook.remove()
    assert len(mids) == 1
    ref.update(unet_sample=sample, unet_timestep=timestep, unet_states=ref["states"].clone(),
               unet_text_embeds=ref["pooled"].clone(), unet_time_ids=time_ids, unet_out=out.contiguous(),
               unet_mid=mids[0].contiguous())
    log(f"unet: out {list(out.shape)}, mid {list(mids[0].shape)} in {time.time() - t0:.0f} s")


DESCRIPTIONS = {
    "ids_1": "input: token ids for text_encoder (CLIP ViT-L): " + str(PROMPT_IDS) + f" padded with {PAD_1}",
    "ids_2": "input: token ids for text_encoder_2 (OpenCLIP bigG): " + str(PROMPT_IDS) + f" padded with {PAD_2}",
    "states": "output: cat(text_encoder(ids_1).hidden_states[-2], text_encoder_2(ids_2).hidden_states[-2], dim=-1) "
              "(StableDiffusionXLPipeline.encode_prompt's prompt_embeds)",
    "pooled": "output: text_encoder_2(ids_2).text_embeds (text_projection of the final-layer-normed state at the EOS "
              "position, argmax(ids_2) = 6)",
    "unet_sample": f"input: UNet latent, randn with torch.Generator().manual_seed({INPUT_SEED})",
    "unet_timestep": f"input: UNet timestep ({TIMESTEP}), float32 [1]",
    "unet_states": "input: UNet encoder_hidden_states (= states)",
    "unet_text_embeds": "input: UNet added_cond_kwargs['text_embeds'] (= pooled)",
    "unet_time_ids": "input: UNet added_cond_kwargs['time_ids']: original size (256, 256), crop top-left (0, 0), "
                     "target size (256, 256)",
    "unet_out": "output: unet(unet_sample, unet_timestep, unet_states, added_cond_kwargs).sample (noise prediction)",
    "unet_mid": "output: unet.mid_block's output during that call (forward hook)",
    "vae_latent": f"input: VAE latent, randn with torch.Generator().manual_seed({INPUT_SEED + 1}); passed to decode "
                  "as it is (NO division by the scaling factor 0.13025)",
    "vae_decoded": "output: vae.decode(vae_latent).sample (no scaling factor, no clamping)",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--unet", type=Path, default=DEFAULT_UNET,
                    help="the random SDXL UNet folder of bench/make_random_network.py --network sdxl-unet")
    args = ap.parse_args()

    import diffusers
    import safetensors
    import transformers
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    assert (args.unet / ".complete").exists(), f"{args.unet}: run bench/make_random_network.py --network sdxl-unet"
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("references.json", "references.safetensors"):
        (args.out / name).unlink(missing_ok=True)  # never leave references next to another run's checkpoint

    with torch.no_grad():
        models = build_small_models()
        stage("build_text_encoders_and_vae")
        log("built text_encoder, text_encoder_2 and vae (float16)")
        models["unet"] = load_unet_f16(args.unet)
        stage("load_unet_float16")
        log(f"loaded the UNet from {args.unet} as float16")
        params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
        checkpoint = write_checkpoint(models, args.out / CHECKPOINT)
        stage("write_checkpoint")

        ref = {}
        eos = text_references(models, ref)
        del models["text_encoder"], models["text_encoder_2"]
        stage("text_encoder_references")
        vae_references(models.pop("vae"), ref)
        stage("vae_references")
        unet_references(models.pop("unet"), ref)
        stage("unet_references")
        del models

    for k, v in ref.items():
        assert k in DESCRIPTIONS, k
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
    save_file(ref, str(args.out / "references.safetensors"), metadata={"format": "pt"})
    os.chmod(args.out / "references.safetensors", 0o644)  # safetensors writes 0600

    def describe(k, v):
        d = {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""), "role": DESCRIPTIONS[k]}
        if v.is_floating_point():
            d.update(max_abs=float(v.abs().max()), mean=float(v.mean()), std=float(v.std()) if v.numel() > 1 else 0.0)
        return d

    meta = {
        "description": "Full-size random-weight SDXL base single file and diffusers' float32 CPU outputs for it, "
        "written by bench/make_sdxl_single_file_check.py (see its docstring) for examples/check_single_file.rs: "
        "load the checkpoint with dma's built-in SDXL configs, feed the inputs, compare with the outputs. The "
        "references come from the checkpoint's float16 values cast to float32.",
        "checkpoint": checkpoint,
        "parameters": params,
        "sources": {
            "unet": f"{args.unet} (bench/make_random_network.py --network sdxl-unet, "
                    f"{json.loads((args.unet / 'bench_info.json').read_text())}) rounded to float16",
            "text_encoder": f"CLIPTextModel(assets/configs/sdxl/text_encoder/config.json) after "
                            f"torch.manual_seed({TEXT_ENCODER_SEED}), rounded to float16",
            "text_encoder_2": f"CLIPTextModelWithProjection(assets/configs/sdxl/text_encoder_2/config.json) after "
                              f"torch.manual_seed({TEXT_ENCODER_2_SEED}), rounded to float16",
            "vae": f"AutoencoderKL.from_config(assets/configs/sdxl/vae/config.json) after "
                   f"torch.manual_seed({VAE_SEED}), rounded to float16",
        },
        "configs": {name: json.loads((SDXL_CONFIGS / name / "config.json").read_text())
                    for name in ("unet", "vae", "text_encoder", "text_encoder_2")},
        "unet_timestep": TIMESTEP,
        "unet_time_ids": TIME_IDS,
        "pooled_eos_index": eos,
        "vae_scaling_factor_applied": False,
        "compute": {"dtype": "float32", "device": "cpu", "threads": torch.get_num_threads(), "no_grad": True},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                     "python": sys.version.split()[0]},
        "run": {"seconds": round(time.time() - START, 1), "peak_rss_gb": round(peak_gb(), 2),
                "peak_rss_note": "resource.getrusage(RUSAGE_SELF).ru_maxrss", "stages": TIMES,
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "tensors": {k: describe(k, v) for k, v in ref.items()},
    }
    with open(args.out / "references.json", "w") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")

    print(f"\nwrote {args.out}:")
    for p in sorted(args.out.iterdir()):
        print(f"  {p.name}: {p.stat().st_size / 1e6:,.1f} MB")
    print(f"run: {meta['run']['seconds']:.0f} s, peak RSS {meta['run']['peak_rss_gb']:.2f} GB; stages {TIMES}")
    print(f"checkpoint: {checkpoint['tensors']} tensors {checkpoint['ldm_keys_per_component']}, "
          f"sha256 {checkpoint['sha256']}")
    for k, d in meta["tensors"].items():
        extra = f" max|v| {d['max_abs']:.4g} mean {d['mean']:.4g} std {d['std']:.4g}" if "max_abs" in d else ""
        print(f"  {k:17s} {d['dtype']:8s} {str(d['shape']):18s}{extra}")


if __name__ == "__main__":
    sys.exit(main())
