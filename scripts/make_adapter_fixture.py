#!/usr/bin/env python3
"""Adapters as diffusers and peft write and read them, on tests/fixtures/tiny-sd1: tests/fixtures/adapters/.

How to run (from the repository root; CPU, seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_adapter_fixture.py

- lora/pytorch_lora_weights.safetensors: a rank-1 LoRA made by peft (LoraConfig r=1, lora_alpha=1, target
  modules to_q/to_k/to_v/to_out.0, as diffusers' LoRA training scripts configure it) on the tiny UNet, with
  seeded random lora_A and lora_B (B is zero at initialisation; random here so the update shows), saved by
  StableDiffusionPipeline.save_lora_weights. reference: the UNet's output (float32) loaded with
  load_lora_weights from that file, on seeded inputs, and without the LoRA.
- dit-lora/pytorch_lora_weights.safetensors: the same kind of rank-1 LoRA on tests/fixtures/tiny-dit's transformer
  (every transformer block's attn1 to_q/to_k/to_v/to_out.0), injected by peft (diffusers' DiTTransformer2DModel has
  no LoRA loader of its own) and saved with the `transformer.` prefix diffusers gives transformer LoRAs.
  dit_reference.safetensors: the transformer's output (float32) with that LoRA and without it, on seeded inputs.
- ti/learned_embeds.safetensors: a seeded embedding for the token <tiny-mode0> in the layout diffusers'
  textual_inversion.py saves ({token: [1, D]}). reference: the text encoder's last hidden state for
  "a photo of <tiny-mode0>" after load_textual_inversion, and the token ids.
"""
import json
import os

import torch
from diffusers import DiTTransformer2DModel, StableDiffusionPipeline
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "tests", "fixtures", "tiny-sd1")
OUT = os.path.join(ROOT, "tests", "fixtures", "adapters")
TOKEN = "<tiny-mode0>"
PROMPT = "a photo of " + TOKEN


def pipeline():
    return StableDiffusionPipeline.from_pretrained(BASE, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)


def dit_lora():
    """The DiT part, from its own generator so the UNet files above stay as they were."""
    gen = torch.Generator().manual_seed(12)
    transformer = DiTTransformer2DModel.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "tiny-dit", "transformer"), torch_dtype=torch.float32)
    ref = {
        "sample": torch.randn([2, 4, 8, 8], generator=gen),
        "timesteps": torch.tensor([601, 51]),
        "class_labels": torch.tensor([3, 1000]),
    }
    with torch.no_grad():
        ref["out_base"] = transformer(ref["sample"], timestep=ref["timesteps"], class_labels=ref["class_labels"]).sample
    config = LoraConfig(r=1, lora_alpha=1, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    transformer = inject_adapter_in_model(config, transformer)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        ref["out_lora"] = transformer(ref["sample"], timestep=ref["timesteps"], class_labels=ref["class_labels"]).sample
    state = {f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    os.makedirs(os.path.join(OUT, "dit-lora"), exist_ok=True)
    save_file(state, os.path.join(OUT, "dit-lora", "pytorch_lora_weights.safetensors"))
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "dit_reference.safetensors"))


def main():
    os.makedirs(os.path.join(OUT, "lora"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "ti"), exist_ok=True)
    gen = torch.Generator().manual_seed(11)
    ref = {}

    pipe = pipeline()
    sample = torch.randn([2, 4, 16, 16], generator=gen)
    context = torch.randn([2, 7, 32], generator=gen)
    timestep = torch.tensor([601, 51])
    ref["unet_sample"], ref["unet_context"], ref["unet_timesteps"] = sample, context, timestep
    with torch.no_grad():
        ref["unet_out_base"] = pipe.unet(sample, timestep, context).sample

    pipe.unet.add_adapter(LoraConfig(r=1, lora_alpha=1, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    state = get_peft_model_state_dict(pipe.unet)
    StableDiffusionPipeline.save_lora_weights(os.path.join(OUT, "lora"), unet_lora_layers=state, safe_serialization=True)

    fresh = pipeline()
    fresh.load_lora_weights(os.path.join(OUT, "lora"))
    with torch.no_grad():
        ref["unet_out_lora"] = fresh.unet(sample, timestep, context).sample

    embedding = torch.randn([1, 32], generator=gen)
    save_file({TOKEN: embedding}, os.path.join(OUT, "ti", "learned_embeds.safetensors"), metadata={"format": "pt"})
    fresh = pipeline()
    fresh.load_textual_inversion(os.path.join(OUT, "ti", "learned_embeds.safetensors"))
    ids = fresh.tokenizer(PROMPT, padding="max_length", max_length=fresh.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref["ti_hidden"] = fresh.text_encoder(ids).last_hidden_state
    ref["ti_ids"] = ids

    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"description": __doc__.strip(), "token": TOKEN, "prompt": PROMPT}, f, indent=2)
        f.write("\n")
    dit_lora()


if __name__ == "__main__":
    main()
