#!/usr/bin/env python3
"""Builds diffusers' UNet2DConditionModel with the Stable Diffusion 1.5 config and seeded random weights, and saves
it with save_pretrained (config.json + diffusion_pytorch_model.safetensors, f32, about 3.4 GB).

Used by bench/alignment.sh; the folder lives in a cache outside the repository and is reused when present.

    python3 bench/make_sd15_unet.py [--out DIR] [--seed N] [--force]
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

DEFAULT_OUT = os.path.join(os.environ.get("DMA_CACHE", os.path.expanduser("~/.cache/dma")), "bench", "sd15-random-unet")


def complete(folder):
    return os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(
        os.path.join(folder, "diffusion_pytorch_model.safetensors")
    ) and os.path.isfile(os.path.join(folder, ".complete"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even when the folder is complete")
    args = ap.parse_args()
    if complete(args.out) and not args.force:
        print(f"reusing {args.out}", file=sys.stderr)
        return
    import torch
    from diffusers import UNet2DConditionModel

    start = time.time()
    torch.manual_seed(args.seed)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
    params = sum(p.numel() for p in unet.parameters())
    print(f"built SD 1.5 UNet: {params / 1e6:.1f}M parameters in {time.time() - start:.0f} s", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    marker = os.path.join(args.out, ".complete")
    if os.path.exists(marker):
        os.remove(marker)
    unet.save_pretrained(args.out, safe_serialization=True, max_shard_size="20GB")
    with open(os.path.join(args.out, "bench_info.json"), "w") as f:
        json.dump({"seed": args.seed, "parameters": params, "torch": torch.__version__}, f)
    open(marker, "w").close()
    print(f"saved {args.out} in {time.time() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
