#!/usr/bin/env python3
"""The DDIM step with a clipped x0, against diffusers: tests/fixtures/ddim-clipped/.

How to run (from the repository root; CPU, a second, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_ddim_clipped_fixture.py

The scheduler is the embedded model's (models/embedded/scheduler: DDPM's linear betas, clip_sample, 20 steps).
At three timesteps (the first, a middle one, the last) diffusers' DDIMScheduler.step runs with eta 0 on seeded
model outputs and samples large enough that x0 is clipped, once with use_clipped_model_output False (the
default: the clipped x0 with the unclipped noise) and once True (the noise re-derived from the clipped x0).
Writes reference.safetensors (inputs and outputs, float32) and reference.json (timesteps and what each key is).
"""
import json
import os

import torch
from diffusers import DDIMScheduler
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "ddim-clipped")
STEPS = 20


def main():
    scheduler = DDIMScheduler.from_pretrained(os.path.join(ROOT, "models", "embedded"), subfolder="scheduler")
    scheduler.set_timesteps(STEPS)
    timesteps = [int(scheduler.timesteps[i]) for i in (0, STEPS // 2, STEPS - 1)]
    gen = torch.Generator().manual_seed(7)
    ref = {}
    for t in timesteps:
        model_output = torch.randn([2, 1, 8, 8], generator=gen) * 1.5
        sample = torch.randn([2, 1, 8, 8], generator=gen) * 1.5
        ref[f"t{t}_model_output"] = model_output
        ref[f"t{t}_sample"] = sample
        for clipped in (False, True):
            out = scheduler.step(model_output, t, sample, eta=0.0, use_clipped_model_output=clipped)
            name = "clipped" if clipped else "default"
            ref[f"t{t}_{name}_prev"] = out.prev_sample
            ref[f"t{t}_{name}_pred_x0"] = out.pred_original_sample
    os.makedirs(OUT, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))
    import diffusers

    info = {
        "scheduler": "models/embedded/scheduler/scheduler_config.json",
        "num_inference_steps": STEPS,
        "timesteps": timesteps,
        "keys": "t<T>_model_output, t<T>_sample: the inputs; t<T>_<default|clipped>_prev and _pred_x0: "
        "scheduler.step(model_output, T, sample, eta=0, use_clipped_model_output=False|True)",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
