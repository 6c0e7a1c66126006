#!/usr/bin/env python3
"""Builds a network at a published model's size with seeded random weights, and saves it with save_pretrained
(config.json + diffusion_pytorch_model.safetensors, f32): diffusers' UNet2DConditionModel with the Stable
Diffusion 1.5 config (about 3.4 GB) or SDXL base 1.0's (`--network sdxl-unet`, the config the single-file loader
builds in, assets/configs/sdxl/unet/config.json; about 10.3 GB), or DiTTransformer2DModel with DiT-XL/2-256's
(`--network dit-xl-256`, about 2.7 GB).

Used by bench/alignment.sh; the folder lives in a cache outside the repository and is reused when present.

    python3 bench/make_random_network.py [--network sd15-unet|sdxl-unet|dit-xl-256] [--out DIR] [--seed N] [--force]
"""
import argparse
import json
import os
import sys
import time

# The SD 1.5 UNet config (runwayml/stable-diffusion-v1-5, unet/config.json), written out in full.
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,  # the number of heads for SD 1.x (NOTES §5)
    use_linear_projection=False,
    upcast_attention=False,
    resnet_time_scale_shift="default",
)
# facebook/DiT-XL-2-256, transformer/config.json, written out in full.
DIT_XL_256_CONFIG = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    dropout=0.0,
    norm_num_groups=32,
    attention_bias=True,
    sample_size=32,
    patch_size=2,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    upcast_attention=False,
    norm_type="ada_norm_zero",
    norm_elementwise_affine=False,
    norm_eps=1e-5,
)

NETWORKS = {"sd15-unet": "sd15-random-unet", "sdxl-unet": "sdxl-random-unet", "dit-xl-256": "dit-xl-256-random-transformer"}
SDXL_UNET_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "configs", "sdxl", "unet", "config.json")
CACHE = os.path.join(os.environ.get("DMA_CACHE", os.path.expanduser("~/.cache/dma")), "bench")


def complete(folder):
    return os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(
        os.path.join(folder, "diffusion_pytorch_model.safetensors")
    ) and os.path.isfile(os.path.join(folder, ".complete"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", choices=sorted(NETWORKS), default="sd15-unet")
    ap.add_argument("--out", help="default: the bench cache's folder for the network")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even when the folder is complete")
    args = ap.parse_args()
    args.out = args.out or os.path.join(CACHE, NETWORKS[args.network])
    if complete(args.out) and not args.force:
        print(f"reusing {args.out}", file=sys.stderr)
        return
    import torch
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    start = time.time()
    torch.manual_seed(args.seed)
    if args.network == "dit-xl-256":
        net = DiTTransformer2DModel(**DIT_XL_256_CONFIG).eval()
    elif args.network == "sdxl-unet":
        with open(SDXL_UNET_CONFIG) as f:
            config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
        net = UNet2DConditionModel(**config).eval()
    else:
        net = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
    params = sum(p.numel() for p in net.parameters())
    print(f"built {args.network}: {params / 1e6:.1f}M parameters in {time.time() - start:.0f} s", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    marker = os.path.join(args.out, ".complete")
    if os.path.exists(marker):
        os.remove(marker)
    net.save_pretrained(args.out, safe_serialization=True, max_shard_size="20GB")
    with open(os.path.join(args.out, "bench_info.json"), "w") as f:
        json.dump({"network": args.network, "seed": args.seed, "parameters": params, "torch": torch.__version__}, f)
    open(marker, "w").close()
    print(f"saved {args.out} in {time.time() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
