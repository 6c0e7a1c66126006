#!/usr/bin/env python3
"""Build tests/fixtures/tiny-clip: tiny random transformers CLIPModels and their reference outputs, which the Rust
CLIP model (src/models/clip.rs, clip_vision.rs) is checked against by tests/clip_model_parity.rs.

How to run (from the repository root, after scripts/make_fixtures.py, whose tiny-sd1 tokenizer it reuses; CPU only,
a few seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_clip_fixture.py

It is deterministic (fixed seeds, float32 on CPU) and rewrites, from scratch:

* tests/fixtures/tiny-clip/  (RGB, like OpenAI's checkpoints)
    - config.json + model.safetensors of a CLIPModel as transformers 5 saves it (`text_model.`, `vision_model.`,
      `text_projection.weight`, `visual_projection.weight`, `logit_scale`, float32), plus the two
      `*.embeddings.position_ids` int64 buffers that OpenAI's model.safetensors on the Hub still carry (transformers
      no longer saves them, and ignores them when loading).
      Text: the tiny-sd1 vocabulary (1514 tokens), width 24, 2 layers, 4 heads, MLP 48, 77 positions, quick_gelu.
      Vision: 32x32 RGB images, 8x8 patches (16 + the class token), width 32, 2 layers, 4 heads, MLP 64, quick_gelu.
      Projection 16 (every width differs, so a swapped dimension cannot go unnoticed); logit_scale ln(20).
      (The text width is 24, not tiny-sd1's 32, because the 1514-token embedding dominates the fixture's size.)
    - preprocessor_config.json as transformers 5 writes it: shortest edge 32, crop 32x32, bicubic, OpenAI's mean/std.
    - tokenizer/: tiny-sd1's vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json, copied.
* tests/fixtures/tiny-clip/grayscale/  (1 channel, like the project's own small CLIP)
    - the same layout; text: 64 tokens (end token 63), width 16, 1 layer, 16 positions; vision: num_channels 1,
      width 16, 1 layer, 2 heads, gelu; projection 8; preprocessor_config.json in the older style of OpenAI's Hub
      repositories (CLIPFeatureExtractor, sizes as plain numbers), mean [0.5], std [0.25], no RGB conversion.
* reference.safetensors + reference.json in each folder: outputs of transformers' CLIPImageProcessor (its PIL
  backend, CLIPImageProcessorPil: what transformers uses without torchvision, and the same PIL bicubic resize OpenAI's
  original preprocessing applies) on raw images in [0, 1] whose values are multiples of 1/255, so PIL's 8-bit input
  is exact; and of transformers' CLIPModel, re-loaded from the folder, on those pixel values (concatenated along the
  batch, in the order reference.json lists) and a few token sequences. reference.json describes every tensor.

Weights are random, then perturbed (make_fixtures.perturb_: non-trivial layer norms) so no part is an identity.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import torch

from make_fixtures import FIXTURES, ROOT, check_sane, log, perturb_, stats

OUT = FIXTURES / "tiny-clip"
SD1_TOKENIZER = FIXTURES / "tiny-sd1" / "tokenizer"
PROMPTS = ["a photo of a dog", "a photo of a cat", "a sneaker"]
# Leaving out PIL's 8-bit rounding of its two passes can move a pixel by up to 0.5 level (first pass) times the
# second pass's largest absolute weight sum (1.25, upscaling) plus 0.5 (second pass): 1.125 grey levels of 1/255.
TOLERANCE_LEVELS = 1.25


def rgb_config():
    from transformers import CLIPConfig

    vocab = 1514  # the tiny-sd1 vocabulary: 1512 + bos + eos
    text = dict(
        vocab_size=vocab,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, logit_scale_init_value=math.log(20))


def gray_config():
    from transformers import CLIPConfig

    text = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        hidden_act="quick_gelu",
        bos_token_id=62,
        eos_token_id=63,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        num_channels=1,
        hidden_act="gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=8, logit_scale_init_value=math.log(20))


def save_model(config, folder, seed):
    """Saves a random CLIPModel with the Hub's extra position_ids buffers; returns its state dict."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    perturb_(model, torch.Generator().manual_seed(seed + 1))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(str(folder), safe_serialization=True)

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    for part in ("text_model", "vision_model"):
        assert any(k.startswith(part + ".") for k in tensors), f"transformers saved no `{part}.` keys"
    assert {"logit_scale", "text_projection.weight", "visual_projection.weight"} <= set(tensors)
    positions = {
        "text_model": config.text_config.max_position_embeddings,
        "vision_model": (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1,
    }
    for part, n in positions.items():
        key = f"{part}.embeddings.position_ids"
        assert key not in tensors, f"transformers now saves {key}: drop this addition"
        tensors[key] = torch.arange(n, dtype=torch.int64).unsqueeze(0)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return original


def reload_model(folder, original):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    got = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    want = {k: v for k, v in original.items() if not k.endswith("position_ids")}
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    for k, v in want.items():
        assert torch.equal(got[k], v), f"{k} changed on reload"
    return model


def pixel_image(shape, generator):
    """Random image in [0, 1] on the 8-bit grid, smooth enough to look like one (low-res noise, upsampled)."""
    b, c, h, w = shape
    coarse = torch.rand([b, c, max(2, h // 6), max(2, w // 6)], generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.15 * torch.randn(shape, generator=generator)).clamp(0, 1)
    return (noisy * 255).round() / 255


def emulate_pil(processor, images):
    """CLIPImageProcessorPil's resize/crop/normalise written with libtorch's antialiased bicubic, as the Rust code
    does it (width then height, each pass clamped to [0, 1]); with `round_passes`, also PIL's 8-bit rounding of each
    pass. Only used to measure and explain the difference from PIL, which is then stated in reference.json."""
    import torch.nn.functional as F

    def resize(x, size, round_passes):
        for shape in ((x.shape[2], size[1]), size):
            x = F.interpolate(x, size=shape, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            if round_passes:
                x = (x * 255).round() / 255
        return x

    h, w = images.shape[2:]
    n = processor.size["shortest_edge"]
    size = (int(n * h / w), n) if w <= h else (n, int(n * w / h))
    ch, cw = processor.crop_size["height"], processor.crop_size["width"]
    mean = torch.tensor(processor.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(processor.image_std).view(1, -1, 1, 1)
    out = {}
    for round_passes in (False, True):
        x = resize(images, size, round_passes)
        top, left = (x.shape[2] - ch) // 2, (x.shape[3] - cw) // 2
        out[round_passes] = (x[:, :, top : top + ch, left : left + cw] - mean) / std
    return out


def preprocess_references(folder, ref, raw_inputs, tolerance_levels):
    """Runs CLIPImageProcessorPil from the folder on each raw image; records outputs and the measured gap to the
    libtorch emulation."""
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
    gaps = {}
    for name, raw in raw_inputs.items():
        out = processor(images=list(raw), do_rescale=False, return_tensors="pt").pixel_values
        ref[f"{name}_raw"] = raw
        ref[f"{name}_pixel_values"] = out
        emulated = emulate_pil(processor, raw if raw.shape[1] == out.shape[1] else raw.expand(-1, out.shape[1], -1, -1))
        std = torch.tensor(processor.image_std).view(1, -1, 1, 1)
        levels = {r: ((emulated[r] - out).abs() * std * 255).max().item() for r in (False, True)}
        # With 8-bit passes libtorch is PIL up to PIL's fixed-point rounding (a rare tie when upscaling): the
        # remaining gap is the rounding the Rust code leaves out, not a different filter.
        assert levels[True] < 1.001, f"{name}: libtorch with 8-bit passes is {levels[True]} grey levels from PIL"
        gaps[name] = {
            "max_abs_diff": (emulated[False] - out).abs().max().item(),
            "grey_levels": levels[False],
            "grey_levels_with_8bit_passes": levels[True],
        }
        assert levels[False] < tolerance_levels, f"{name}: {levels[False]} grey levels from PIL"
        log(
            f"  {folder.name} {name}: libtorch resize is {levels[False]:.3f} grey levels from PIL "
            f"({levels[True]:.3f} with 8-bit passes)"
        )
    return gaps


@torch.no_grad()
def model_references(model, ref, pixel_values, ids):
    vision = model.vision_model(pixel_values=pixel_values)
    ref["vision_last_hidden_state"] = vision.last_hidden_state
    ref["vision_pooled"] = vision.pooler_output
    ref["input_ids"] = ids
    out = model(input_ids=ids, pixel_values=pixel_values)
    ref["image_embeds"] = out.image_embeds
    ref["text_embeds"] = out.text_embeds
    ref["logits_per_image"] = out.logits_per_image
    # The projections of transformers' own feature getters, normalised, must be what CLIPModel.forward used.
    image_features = model.get_image_features(pixel_values=pixel_values).pooler_output
    assert torch.allclose(image_features / image_features.norm(dim=-1, keepdim=True), out.image_embeds, atol=1e-6)
    for k in ("vision_pooled", "image_embeds", "text_embeds", "logits_per_image"):
        check_sane(k, ref[k])
        log(f"  {k:24s} {stats(ref[k])}")


def write_references(folder, ref, meta):
    import transformers
    from safetensors.torch import save_file

    ref = {k: v.detach().contiguous() for k, v in ref.items()}
    for k, v in ref.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    save_file(ref, str(folder / "reference.safetensors"), metadata={"format": "pt"})
    meta["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    meta["tensors"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in ref.items()}
    with open(folder / "reference.json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


MODEL_DESCRIPTION = (
    "Reference outputs of transformers' CLIPModel loaded from this folder, float32 on CPU. The model's input "
    "pixel_values are the *_pixel_values named in model_inputs, concatenated along the batch. "
    "vision_last_hidden_state / vision_pooled: model.vision_model(pixel_values) last_hidden_state / pooler_output "
    "(post_layernorm of the class token). image_embeds, text_embeds, logits_per_image: model(input_ids, "
    "pixel_values) (embeddings unit-length; logits = exp(logit_scale) * cosine). "
    "*_raw are images in [0, 1] (multiples of 1/255); *_pixel_values = CLIPImageProcessorPil.from_pretrained(folder)"
    "(images=list(raw), do_rescale=False). preprocess_gap: the largest difference between that and libtorch's "
    "antialiased bicubic resize without PIL's 8-bit rounding of each pass (in normalised units, and in grey levels "
    "of 1/255); with that rounding too, libtorch matches PIL up to PIL's own fixed-point rounding (at most one grey "
    "level, at a few pixels)."
)


def build_rgb():
    from transformers import CLIPImageProcessorPil, CLIPTokenizer

    config = rgb_config()
    original = save_model(config, OUT, seed=31)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(OUT))
    shutil.copytree(SD1_TOKENIZER, OUT / "tokenizer")
    model = reload_model(OUT, original)

    gen = torch.Generator().manual_seed(7)
    tok = CLIPTokenizer.from_pretrained(str(OUT / "tokenizer"), local_files_only=True)
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert (ids == config.text_config.eos_token_id).any(dim=1).all()
    ref = {}
    raw_inputs = {
        "downscale": pixel_image([1, 3, 40, 48], gen),  # -> 32x38, crop columns 3..35
        "upscale": pixel_image([1, 3, 20, 24], gen),  # -> 32x38
        "gray_input": pixel_image([1, 1, 45, 40], gen),  # grayscale into the RGB model; -> 36x32, crop rows 2..34
    }
    gaps = preprocess_references(OUT, ref, raw_inputs, tolerance_levels=TOLERANCE_LEVELS)
    model_references(model, ref, torch.cat([ref[f"{k}_pixel_values"] for k in raw_inputs]), ids)
    meta = {
        "description": MODEL_DESCRIPTION,
        "model_inputs": list(raw_inputs),
        "prompts": PROMPTS,
        "preprocess_tolerance_grey_levels": TOLERANCE_LEVELS,
        "preprocess_gap": gaps,
    }
    write_references(OUT, ref, meta)


def build_gray():
    folder = OUT / "grayscale"
    folder.mkdir()
    config = gray_config()
    original = save_model(config, folder, seed=53)
    # The style of OpenAI's Hub repositories (e.g. openai/clip-vit-base-patch32): sizes as plain numbers.
    processor_config = {
        "crop_size": 32,
        "do_center_crop": True,
        "do_convert_rgb": False,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.5],
        "image_std": [0.25],
        "resample": 3,
        "size": 32,
    }
    with open(folder / "preprocessor_config.json", "w") as f:
        json.dump(processor_config, f, indent=2)
        f.write("\n")
    model = reload_model(folder, original)

    gen = torch.Generator().manual_seed(11)
    # bos, words, eos, then padding (id 0) after the end token, which pooling must skip.
    ids = torch.tensor([[62, 5, 17, 63] + [0] * 12, [62, 40, 41, 42, 43, 63] + [0] * 10], dtype=torch.int64)
    ref = {}
    raw_inputs = {"downscale": pixel_image([2, 1, 48, 40], gen)}  # -> 38x32, crop rows 3..35
    gaps = preprocess_references(folder, ref, raw_inputs, tolerance_levels=TOLERANCE_LEVELS)
    model_references(model, ref, ref["downscale_pixel_values"], ids)
    meta = {
        "description": MODEL_DESCRIPTION,
        "model_inputs": ["downscale"],
        "preprocess_tolerance_grey_levels": TOLERANCE_LEVELS,
        "preprocess_gap": gaps,
    }
    write_references(folder, ref, meta)


def main():
    import transformers

    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    assert (SD1_TOKENIZER / "vocab.json").exists(), f"missing {SD1_TOKENIZER}: run scripts/make_fixtures.py first"
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    log(f"building {OUT.relative_to(ROOT)}")
    build_rgb()
    build_gray()
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    log(f"done; {OUT.relative_to(ROOT)} holds {total / 1e3:.0f} kB")
    assert total < 500e3, "the CLIP fixture must stay under 500 kB"


if __name__ == "__main__":
    sys.exit(main())
