#!/usr/bin/env python3
"""Build tests/fixtures/tiny-dit: a tiny random DiTPipeline in diffusers layout and its reference outputs, which the
Rust DiT (src/models/dit/) and its pipeline are checked against by tests/dit_parity.rs.

How to run (from the repository root; CPU only, a few seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_dit_fixture.py

It is deterministic (fixed seeds, float32 on CPU) and rewrites, from scratch:

* tests/fixtures/tiny-dit/  (what DiTPipeline.save_pretrained writes, plus model_index.json's `id2label`, which the
  Hub's DiT folders carry and DiTPipeline.from_pretrained passes back to the pipeline)
    - transformer/: DiTTransformer2DModel, 2 heads x 8 = width 16, 3 blocks, patch 2, sample_size 8 (16 tokens),
      4 input channels and learned sigma (out_channels 8), 1000 classes (+ the null class 1000 that DiTPipeline
      hard-codes for guidance; id2label names the first ten), stored
      float16 (the values are float16-representable, so nothing changes numerically; a loader must upcast).
    - vae/: AutoencoderKL as in tiny-sd1 (8x8 latents decode to 16x16 RGB), float32.
    - scheduler/: DDIMScheduler with DiT's linear betas (1e-4 .. 0.02), epsilon prediction.
    - model_index.json: id2label with ImageNet-style comma-separated names (several names per class, capitals,
      spaces), so name matching is exercised.
    - legacy_transformer_config.json: the same transformer described as older DiT folders do (`_class_name`
      Transformer2DModel and its extra keys); checked here to load into diffusers' Transformer2DModel with the same
      weights and give the same output.
* reference.safetensors + reference.json: outputs of diffusers, float32 on CPU, from the pipeline re-loaded from
  the folder:
    - transformer_sample [3,4,8,8], transformer_timesteps [3] (int64: 999, 500, 1), transformer_class_labels [3]
      (two classes and the null class) -> transformer_out [3,8,8,8];
    - block_outputs_{i}: the tokens [3,16,16] after transformer block i (forward hooks); the last is DiT's h;
    - pipeline: DiTPipeline(class_labels=[3, 7], guidance_scale=4.0, num_inference_steps=10) from
      torch.Generator().manual_seed(42): pipeline_start_latents (drawn as the pipeline draws them),
      pipeline_timesteps, pipeline_final_latents (the conditional half before the VAE) and pipeline_images
      (NCHW in [0,1], the pipeline's numpy output transposed).
    - label_ids: DiTPipeline.get_label_ids of the names in reference.json's `label_names`.

Weights are random, then perturbed (make_fixtures.perturb_: non-trivial layer norms, every adaLN modulation,
class row and output projection non-zero: DiT initialises those to zero, which would hide mistakes).
"""

import json
import shutil
import sys
from pathlib import Path

import torch

from make_fixtures import FIXTURES, check_sane, log, perturb_, stats, tiny_vae

FOLDER = FIXTURES / "tiny-dit"
# DiTPipeline hard-codes the null class as id 1000, so the label table has ImageNet's 1000 rows (+ the null row);
# id2label names the first ten.
CLASSES = 1000
ID2LABEL = {
    "0": "sneaker, trainer",
    "1": "sandal",
    "2": "ankle boot, boot",
    "3": "Egyptian cat",
    "4": "tabby, tabby cat",
    "5": "great white shark, white shark, man-eater",
    "6": "tench, Tinca tinca",
    "7": "umbrella",
    "8": "the digit seven, seven",
    "9": "ankle bracelet",
}
LABEL_NAMES = ["umbrella", "white shark", "Egyptian cat", "boot", "seven"]
TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=8,
    num_layers=3,
    sample_size=8,
    patch_size=2,
    num_embeds_ada_norm=CLASSES,
    norm_num_groups=8,
)


def build():
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    gen = torch.Generator().manual_seed(5151)
    torch.manual_seed(5150)
    transformer = DiTTransformer2DModel(**TRANSFORMER)
    perturb_(transformer, gen, scale=0.1)
    torch.manual_seed(5152)
    vae = tiny_vae(16)
    perturb_(vae, gen)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
    )
    return DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label={int(k): v for k, v in ID2LABEL.items()})


def save(pipe):
    if FOLDER.exists():
        shutil.rmtree(FOLDER)
    pipe.transformer.to(torch.float16)
    pipe.save_pretrained(str(FOLDER), safe_serialization=True)
    pipe.transformer.to(torch.float32)
    index_path = FOLDER / "model_index.json"
    index = json.loads(index_path.read_text())
    assert "id2label" not in index, "diffusers now saves id2label itself: drop this step"
    index["id2label"] = ID2LABEL
    index_path.write_text(json.dumps(index, indent=2) + "\n")


def load():
    from diffusers import DiTPipeline

    pipe = DiTPipeline.from_pretrained(str(FOLDER), local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.labels, "id2label did not reach the pipeline"
    return pipe


def legacy_config(transformer):
    """The transformer's config as older DiT folders write it (class Transformer2DModel), checked to load."""
    from diffusers import Transformer2DModel

    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    config.update(
        _class_name="Transformer2DModel",
        cross_attention_dim=None,
        double_self_attention=False,
        num_vector_embeds=None,
        only_cross_attention=False,
        use_linear_projection=False,
    )
    legacy = Transformer2DModel.from_config(config)
    missing, unexpected = legacy.load_state_dict(transformer.state_dict(), strict=True)
    assert not missing and not unexpected
    return config, legacy


@torch.no_grad()
def references(pipe):
    t = pipe.transformer.eval()
    gen = torch.Generator().manual_seed(77)
    sample = torch.randn(3, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([999, 500, 1], dtype=torch.int64)
    labels = torch.tensor([3, 7, CLASSES], dtype=torch.int64)
    ref = {"transformer_sample": sample, "transformer_timesteps": timesteps, "transformer_class_labels": labels}

    outputs = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for b in t.transformer_blocks]
    ref["transformer_out"] = t(sample, timestep=timesteps, class_labels=labels).sample
    for h in hooks:
        h.remove()
    assert len(outputs) == len(t.transformer_blocks)
    for i, out in enumerate(outputs):
        ref[f"block_outputs_{i}"] = out
        check_sane(f"block {i} output", out)
    check_sane("transformer output", ref["transformer_out"])
    log("transformer output", stats(ref["transformer_out"]))

    config, legacy = legacy_config(t)
    legacy_out = legacy(sample, timestep=timesteps, class_labels=labels).sample
    assert torch.equal(legacy_out, ref["transformer_out"]), "Transformer2DModel gives another output"

    # The whole pipeline, capturing the latents it draws and those it hands to the VAE.
    seen = {}
    decode = pipe.vae.decode

    def capture(latents, *a, **k):
        seen["final"] = latents.clone() * pipe.vae.config.scaling_factor
        return decode(latents, *a, **k)

    pipe.vae.decode = capture
    from diffusers.utils.torch_utils import randn_tensor

    ref["pipeline_start_latents"] = randn_tensor((2, 4, 8, 8), generator=torch.Generator().manual_seed(42), dtype=torch.float32)
    images = pipe(class_labels=[3, 7], guidance_scale=4.0, num_inference_steps=10, generator=torch.Generator().manual_seed(42), output_type="np").images
    pipe.vae.decode = decode
    ref["pipeline_timesteps"] = pipe.scheduler.timesteps.to(torch.int64)
    ref["pipeline_final_latents"] = seen["final"]
    ref["pipeline_images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    check_sane("final latents", seen["final"])
    assert not torch.allclose(ref["pipeline_images"][0], ref["pipeline_images"][1], atol=1e-3), "the classes draw the same image"

    ref["label_ids"] = torch.tensor(pipe.get_label_ids(LABEL_NAMES), dtype=torch.int64)
    return ref, config


def write(ref, legacy):
    import diffusers
    from safetensors.torch import save_file

    ref = {k: v.detach().contiguous() for k, v in ref.items()}
    save_file(ref, str(FOLDER / "reference.safetensors"), metadata={"format": "pt"})
    (FOLDER / "legacy_transformer_config.json").write_text(json.dumps(legacy, indent=2) + "\n")
    meta = {
        "description": __doc__.split("* reference.safetensors")[1].strip(),
        "label_names": LABEL_NAMES,
        "pipeline": {"class_labels": [3, 7], "guidance_scale": 4.0, "num_inference_steps": 10, "seed": 42},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in ref.items()},
    }
    (FOLDER / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")


def main():
    save(build())
    pipe = load()
    ref, legacy = references(pipe)
    write(ref, legacy)
    log("wrote", FOLDER)


if __name__ == "__main__":
    sys.exit(main())
