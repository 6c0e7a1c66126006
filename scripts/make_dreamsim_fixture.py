#!/usr/bin/env python3
"""Build tests/fixtures/tiny-dreamsim: a tiny random DreamSim "ensemble" model, built, loaded and run with the real
`dreamsim` package's own code (PyPI dreamsim==0.2.1: dreamsim(), download_weights, PerceptualModel, ViTExtractor,
load_clip_as_dino, load_open_clip_as_dino, its copy of DINO's VisionTransformer, and peft's LoRA as the package loads
it), its files laid out as a user's cache directory holds them after `dreamsim(pretrained=True, cache_dir=X)`, and
its reference outputs, which the Rust DreamSim model is checked against.

How to run (from the repository root, CPU only, a few seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_dreamsim_fixture.py

(scripts/env.sh installs, once, dreamsim==0.2.1 with --no-deps; it needs peft, timm, torchvision and transformers,
installed there already. The package's load_open_clip_as_dino.py does `import open_clip` for its _sanity_check,
which compares against a downloaded open_clip model and is never called; open-clip-torch 3.3 imports ftfy and wants
timm>=1.0.17, against ImageReward's timm 0.6.13, so when open_clip is not installed this script enters an empty
module under that name, only so that the unused import succeeds.)

It is deterministic (fixed seeds, float32 on CPU, one thread) and rewrites, from scratch, tests/fixtures/tiny-dreamsim/,
which is the cache directory X itself:

* checkpoints/dino_vitbase16_pretrain.pth: what `torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')`
  downloads into X/checkpoints/ (the package calls torch.hub.set_dir(X) first; dino's hubconf fetches it with
  torch.hub.load_state_dict_from_url, whose file name is the URL's last part): a plain state dict of DINO's
  VisionTransformer (cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}.*, norm.*; no head: num_classes=0), loaded strictly. LayerNorm eps 1e-6, GELU (erf).
* clip_vitb16_pretrain.pth.tar, open_clip_vitb16_pretrain.pth.tar: torch.save({'state_dict': {...}}) as
  load_clip_as_dino / load_open_clip_as_dino read them: the same DINO-layout keys plus pos_drop.weight/.bias (CLIP's
  ln_pre: the loaders replace pos_drop by a LayerNorm) and 'proj' [64, 32] (features = model(x) @ proj, the model
  returning the final-normed class token). The loaders set every LayerNorm's eps to 1e-5; clip_vitb16's MLPs use
  QuickGELU (x * sigmoid(1.702 x)), open_clip_vitb16's keep GELU (erf).
* dino_vitb16_pretrain.pth: DINO's training checkpoint stands here in the real cache; ViTExtractor.create_model reads
  its student's projection head ('student' -> 'module.head.mlp.{0,2,4}.weight/bias', 'module.head.last_layer.weight')
  into a DINOHead that only the 'last_layer' feature of a single dino model calls. The ensemble never uses it, but
  download_weights requires the file and create_model reads it, so a stand-in holds exactly those keys, tiny (width
  64 -> 32 -> 32 -> 16 -> 8); a loader of the ensemble must not need it.
* ensemble_lora/: what peft 0.21's PeftModel.save_pretrained writes for the LoRA-wrapped PerceptualModel (as
  DreamSim's training script saves it): adapter_config.json, adapter_model.safetensors (peft's default now; older
  DreamSim releases may hold adapter_model.bin) and peft's README.md model card. LoRA settings are those of
  DreamSim's configs/train_ensemble_model_lora.yaml (lora_r 16, lora_alpha 0.5, lora_dropout 0.3; bias 'none' and
  target_modules ['qkv'] from training/train.py): scale alpha / r = 1/32, on every block's attn.qkv of all three
  ViTs. peft zero-initialises lora_B; both A (std 0.5) and B (std 1) are drawn here so that the LoRA visibly moves
  the embeddings despite the 1/32 scale (delta W has about a third of W's std).
* reference.safetensors + reference.json: raw images, the package's preprocessing, each extractor's feature, the
  embeddings with and without the adapter and the pairwise distances; reference.json describes every tensor, the
  adapter config, every weight file's keys with shapes and dtypes, and the package versions.

How the package is made to build a tiny model (nothing in it is edited; dreamsim() runs as a user calls it):
* Each ViT is the package's VisionTransformer as vit_base builds it (patch 16, mlp_ratio 4, qkv_bias, LayerNorm eps
  1e-6), but width 64, 2 blocks and 1 head (head width 64, as in ViT-B/16, so a loader can take heads = width / 64);
  images stay 224x224 (DreamSim's preprocessing fixes 224): 196 patches + the class token. The projections are 32
  wide (512 in the real ones).
* ViTExtractor.create_model runs as is. For 'dino_vitb16' it calls torch.hub.load('facebookresearch/dino:main', ...),
  which would download dino's code: torch.hub.load is replaced, during dreamsim(), by a function that does what
  dino's hubconf.dino_vitb16 does (vit_base(patch_size=16, num_classes=0), the weights from
  torch.hub.load_state_dict_from_url(its URL), which finds them in X/checkpoints/ and downloads nothing, load strict),
  tiny. For the clips, the name vit_base in load_clip_as_dino.py and load_open_clip_as_dino.py is the tiny
  constructor, and the package's loaders read the files above.
* PerceptualModel._extract_cls_and_patch hooks block 11 (`layer = 11`, the last of ViT-B's 12) for the 'cls'
  feature; it is replaced by the same code hooking the last block (index 1 of 2). A loader takes the last block's
  output (before the final norm), which is block 11 in the real model.
* EMBED_DIMS (bookkeeping only: with lora=True the MLP is an Identity) gets the tiny widths, so embed_size is 128.

Weights are drawn at the scale of trained ones (make_blip_vqa_fixture.rescale_: linear and convolution weights std
fan_in^-1/2, cls_token and pos_embed std 0.5), then perturbed (make_fixtures.perturb_: non-trivial layer norms,
float16-representable values). The ViT weights are stored as float16 (the real files are float32): every value is
float16-representable, so they are exactly those of the float32 model the references come from, and the three files
are half the size (2 MB in float32, with reference pixels alone 1.8 MB). A loader must upcast. The two 'proj' tensors
stay float32: the package uses them as loaded (model(x) @ proj), and float32 features cannot be multiplied by a
float16 matrix. The adapter is float32 as peft saves a float32 model's adapter (its values are float16-representable
too).

After saving, dreamsim(pretrained=True, device="cpu", cache_dir=X, normalize_embeds=True, dreamsim_type="ensemble")
builds the model from the folder alone; every weight it holds is checked to be the one written, and its embeddings
are checked against a plain re-implementation written from the files and the description in reference.json (qkv
weight + alpha / r * lora_B @ lora_A; see plain_embed).
"""

import importlib.metadata
import importlib.util
import json
import shutil
import sys
import types
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy
import torch

from make_blip_vqa_fixture import rescale_, to_pil
from make_fixtures import FIXTURES, ROOT, check_sane, log, perturb_, stats, write_references

OUT = FIXTURES / "tiny-dreamsim"
IMAGE_SIZE = 224  # dreamsim_args['img_size']
RAW_SIZE = 64  # upsampled to 224, as the embedded model's 32x32 images are
PATCH = 16
WIDTH = 64
DEPTH = 2
HEADS = 1
PROJ_DIM = 32
MODELS = ("dino_vitb16", "clip_vitb16", "open_clip_vitb16")  # dreamsim_args['model_config']['ensemble']
FEATURE_WIDTHS = {"dino_vitb16": WIDTH, "clip_vitb16": PROJ_DIM, "open_clip_vitb16": PROJ_DIM}
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"  # hubconf's
DINO_HUB_FILE = Path("checkpoints") / "dino_vitbase16_pretrain.pth"
CLIP_FILES = {"clip_vitb16": "clip_vitb16_pretrain.pth.tar", "open_clip_vitb16": "open_clip_vitb16_pretrain.pth.tar"}
DINO_TRAINING_FILE = "dino_vitb16_pretrain.pth"
LORA_DIR = "ensemble_lora"
# DreamSim's configs/train_ensemble_model_lora.yaml and training/train.py.
LORA = dict(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=["qkv"])
LORA_A_STD = 0.5
LORA_B_STD = 1.0


def tiny_vit_base(patch_size=16, **kwargs):
    """The package's vit_base (feature_extraction/vision_transformer.py), tiny."""
    from dreamsim.feature_extraction import vision_transformer as vits

    assert patch_size == PATCH, patch_size
    return vits.VisionTransformer(
        img_size=[IMAGE_SIZE],
        patch_size=patch_size,
        embed_dim=WIDTH,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        **kwargs,
    )


def tiny_dino_hub_load(repo, model, *args, **kwargs):
    """Stands for torch.hub.load: does what dino's hubconf.dino_vitb16(pretrained=True) does, tiny."""
    assert (repo, model, args, kwargs) == ("facebookresearch/dino:main", "dino_vitb16", (), {}), (repo, model)
    cached = Path(torch.hub.get_dir()) / DINO_HUB_FILE
    assert cached.exists(), f"{cached} is missing: torch.hub would download it"
    vit = tiny_vit_base(patch_size=16, num_classes=0)
    state_dict = torch.hub.load_state_dict_from_url(url=DINO_URL, map_location="cpu")
    vit.load_state_dict(state_dict, strict=True)
    return vit


@contextmanager
def hub_without_network():
    real = torch.hub.load
    torch.hub.load = tiny_dino_hub_load
    try:
        yield
    finally:
        torch.hub.load = real


def import_dreamsim():
    """Imports the package, patched for a tiny model (see the module docstring); returns dreamsim.model."""
    assert importlib.util.find_spec("dreamsim") is not None, "run `DMA_FIXTURE_DEPS=1 source scripts/env.sh`"
    if importlib.util.find_spec("open_clip") is None:
        sys.modules["open_clip"] = types.ModuleType("open_clip")  # only for _sanity_check, never called
        sys.modules["open_clip"].stubbed = True

    import dreamsim.feature_extraction.load_clip_as_dino as load_clip
    import dreamsim.feature_extraction.load_open_clip_as_dino as load_open_clip
    import dreamsim.model as model

    load_clip.vit_base = tiny_vit_base
    load_open_clip.vit_base = tiny_vit_base

    def _extract_cls_and_patch(self, img, extractor_index=0):
        layer = DEPTH - 1  # the package's: 11, the last of ViT-B's 12 blocks
        out = self.extractor_list[extractor_index].extract_descriptors(img, layer)
        return out

    model.PerceptualModel._extract_cls_and_patch = _extract_cls_and_patch
    for name in MODELS:
        feature = "cls" if name.startswith("dino") else "embedding"
        model.EMBED_DIMS[name] = dict(model.EMBED_DIMS[name], **{feature: FEATURE_WIDTHS[name]})
    return model


# ------------------------------------------------------------------------------------------------------------------
# The files
# ------------------------------------------------------------------------------------------------------------------


def random_vit(seed, ln_pre):
    torch.manual_seed(seed)
    vit = tiny_vit_base(patch_size=PATCH, num_classes=0)
    if ln_pre:
        vit.pos_drop = torch.nn.LayerNorm(WIDTH)  # as load_clip_as_dino does
    rescale_(vit, torch.Generator().manual_seed(seed + 1))
    perturb_(vit, torch.Generator().manual_seed(seed + 2))
    return vit


def half_state_dict(vit):
    """The state dict with its tensors as float16 (exact: see the module docstring), torch.save(model.state_dict())'s
    metadata kept."""
    state = vit.state_dict()
    stored = type(state)()
    stored._metadata = state._metadata
    for k, v in state.items():
        assert v.dtype == torch.float32 and torch.equal(v.half().float(), v), f"{k} is not float16-representable"
        stored[k] = v.half().clone()
    return stored


def write_base_files(folder):
    """Writes the ViTs' files; returns {model_type: the float32 weights, DINO layout, plus 'proj'}."""
    originals = {}
    dino = random_vit(seed=71, ln_pre=False)
    (folder / DINO_HUB_FILE).parent.mkdir(parents=True)
    torch.save(half_state_dict(dino), str(folder / DINO_HUB_FILE))
    originals["dino_vitb16"] = {k: v.clone() for k, v in dino.state_dict().items()}

    for seed, name in ((81, "clip_vitb16"), (91, "open_clip_vitb16")):
        vit = random_vit(seed=seed, ln_pre=True)
        proj = torch.randn([WIDTH, PROJ_DIM], generator=torch.Generator().manual_seed(seed + 3)) * WIDTH**-0.5
        proj = proj.half().float()
        state = dict(half_state_dict(vit))
        assert "pos_drop.weight" in state and "pos_drop.bias" in state
        state["proj"] = proj.clone()  # float32: the package multiplies float32 features by it as loaded
        torch.save({"state_dict": state}, str(folder / CLIP_FILES[name]))
        originals[name] = {**{k: v.clone() for k, v in vit.state_dict().items()}, "proj": proj}

    # DINO's training checkpoint: only what create_model reads (the student's projection head), tiny.
    gen = torch.Generator().manual_seed(101)
    shapes = {"mlp.0": (32, WIDTH), "mlp.2": (32, 32), "mlp.4": (16, 32)}
    student = {}
    for layer, shape in shapes.items():
        student[f"module.head.{layer}.weight"] = (torch.randn(shape, generator=gen) * shape[1] ** -0.5).half().float()
        student[f"module.head.{layer}.bias"] = (0.1 * torch.randn(shape[:1], generator=gen)).half().float()
    student["module.head.last_layer.weight"] = (torch.randn([8, 16], generator=gen) * 0.25).half().float()
    torch.save({"student": student}, str(folder / DINO_TRAINING_FILE))
    return originals


def build_perceptual_model(model, folder):
    """PerceptualModel as dreamsim() builds it, before the LoRA."""
    with hub_without_network():
        return model.PerceptualModel(
            **model.dreamsim_args["model_config"]["ensemble"], device="cpu", load_dir=str(folder), normalize_embeds=True
        )


def lora_layers(peft_model):
    from peft.tuners.lora import LoraLayer

    return {name: mod for name, mod in peft_model.named_modules() if isinstance(mod, LoraLayer)}


def write_adapter(model, folder):
    """The LoRA-wrapped model saved by peft, as DreamSim's training saves it; returns the adapter's weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(111)
    peft_model = get_peft_model(build_perceptual_model(model, folder), LoraConfig(**LORA))
    layers = lora_layers(peft_model)
    assert len(layers) == 3 * DEPTH, sorted(layers)
    gen = torch.Generator().manual_seed(112)
    with torch.no_grad():
        for name, layer in layers.items():
            assert name.endswith("attn.qkv"), name
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            assert a.shape == (LORA["r"], WIDTH) and b.shape == (3 * WIDTH, LORA["r"]), (a.shape, b.shape)
            a.copy_((LORA_A_STD * torch.randn(a.shape, generator=gen)).half().float())
            b.copy_((LORA_B_STD * torch.randn(b.shape, generator=gen)).half().float())
    peft_model.save_pretrained(str(folder / LORA_DIR))
    return {k: v.clone() for k, v in peft_model.state_dict().items() if "lora_" in k}


def load_dreamsim(model, folder):
    """The package's dreamsim(), as a user calls it, with the folder as its cache."""
    for path in (DINO_TRAINING_FILE, *CLIP_FILES.values(), LORA_DIR, DINO_HUB_FILE):
        assert (folder / path).exists(), f"{path} is missing: dreamsim() would download the checkpoint"
    torch.manual_seed(121)
    with hub_without_network():
        ds, preprocess = model.dreamsim(
            pretrained=True, device="cpu", cache_dir=str(folder), normalize_embeds=True, dreamsim_type="ensemble"
        )
    return ds, preprocess


def check_weights(ds, originals, adapter):
    """Every weight the loaded model holds is the one written; the architecture is the documented one."""
    from dreamsim.feature_extraction.load_clip_as_dino import QuickGELU

    base = ds.base_model.model
    assert base.model_list == list(MODELS) and base.feat_type_list == ["cls", "embedding", "embedding"]
    assert base.embed_size == sum(FEATURE_WIDTHS.values()) and isinstance(base.mlp, torch.nn.Identity)
    for i, name in enumerate(MODELS):
        ex = base.extractor_list[i]
        assert ex.model_type == name
        got = {k.replace(".base_layer.", "."): v for k, v in ex.model.state_dict().items() if "lora_" not in k}
        want = {k: v for k, v in originals[name].items() if k != "proj"}
        assert set(got) == set(want), sorted(set(got) ^ set(want))
        for k, v in want.items():
            assert got[k].dtype == torch.float32 and torch.equal(got[k], v), f"{name} {k} changed on load"
        if name != "dino_vitb16":
            assert ex.proj.dtype == torch.float32 and torch.equal(ex.proj, originals[name]["proj"])
        norms = [m for m in ex.model.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert len(norms) == 2 * DEPTH + (1 if name == "dino_vitb16" else 2), len(norms)
        assert {m.eps for m in norms} == {1e-6 if name == "dino_vitb16" else 1e-5}, {m.eps for m in norms}
        for blk in ex.model.blocks:
            act = blk.mlp.act
            assert isinstance(act, QuickGELU) if name == "clip_vitb16" else type(act) is torch.nn.GELU, (name, act)
            assert blk.attn.num_heads == HEADS and blk.attn.scale == (WIDTH // HEADS) ** -0.5
    got = {k: v for k, v in ds.state_dict().items() if "lora_" in k}
    assert set(got) == set(adapter), sorted(set(got) ^ set(adapter))
    for k, v in adapter.items():
        assert torch.equal(got[k], v), f"{k} changed on load"
    for layer in lora_layers(ds).values():
        assert layer.scaling["default"] == LORA["lora_alpha"] / LORA["r"], layer.scaling


# ------------------------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------------------------


def raw_images(generator):
    """Three RGB images [3, 3, 64, 64] in [0, 1] on the 8-bit grid: two structured (gradients with blocks and lines;
    rings with a checkerboard) and smoothed noise."""
    n = RAW_SIZE
    y = torch.linspace(0, 1, n).view(n, 1).expand(n, n)
    x = torch.linspace(0, 1, n).view(1, n).expand(n, n)
    first = torch.stack([x, y, 1 - 0.5 * (x + y)])
    first[:, 10:26, 34:56] = torch.tensor([0.9, 0.1, 0.2]).view(3, 1, 1)
    first[:, 40:58, 8:24] = torch.tensor([0.05, 0.2, 0.85]).view(3, 1, 1)
    first[:, ::9, :] = 1.0  # thin lines: high frequencies
    rings = 0.5 + 0.5 * torch.cos(40 * ((x - 0.4) ** 2 + (y - 0.6) ** 2).sqrt())
    index = torch.arange(n)
    checker = ((index.view(n, 1) // 8 + index.view(1, n) // 8) % 2).float()
    second = torch.stack([rings, 0.2 + 0.6 * checker * (1 - y), 0.1 + 0.8 * x * rings])
    coarse = torch.rand([1, 3, 8, 8], generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(n, n), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.15 * torch.randn([1, 3, n, n], generator=generator)).clamp(0, 1)
    images = torch.cat([first.unsqueeze(0), second.unsqueeze(0), noisy]).clamp(0, 1)
    return (images * 255).round() / 255


@torch.no_grad()
def plain_embed(folder, pixels, use_lora=True):
    """The ensemble written out from the files and reference.json's description alone (no package code), to show
    that the description is complete: what the Rust model does."""
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from dreamsim.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    config = json.loads((folder / LORA_DIR / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    lora = load_file(str(folder / LORA_DIR / "adapter_model.safetensors"))

    def quick_gelu(t):
        return t * torch.sigmoid(1.702 * t)

    def vit(sd, index, x, eps, act, ln_pre):
        sd = {k: v.float() for k, v in sd.items()}
        width = sd["cls_token"].shape[-1]
        heads = width // 64
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
        x = torch.cat([sd["cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + sd["pos_embed"]
        if ln_pre:
            x = F.layer_norm(x, (width,), sd["pos_drop.weight"], sd["pos_drop.bias"], eps)
        b, n, _ = x.shape
        for i in range(depth):
            p = f"blocks.{i}."
            h = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
            w = sd[p + "attn.qkv.weight"]
            if use_lora:
                q = f"base_model.model.extractor_list.{index}.model.blocks.{i}.attn.qkv."
                w = w + scale * lora[q + "lora_B.weight"] @ lora[q + "lora_A.weight"]
            qkv = F.linear(h, w, sd[p + "attn.qkv.bias"]).reshape(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, n, width)
            x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
            h = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
            h = F.linear(act(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"])
            x = x + h + sd[p + "mlp.fc2.bias"]
        return x[:, 0]

    def normalize(mean, std):
        return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    dino = torch.load(str(folder / DINO_HUB_FILE), map_location="cpu", weights_only=True)
    features = [vit(dino, 0, normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), 1e-6, F.gelu, False)]
    for index, (name, act) in enumerate((("clip_vitb16", quick_gelu), ("open_clip_vitb16", F.gelu)), start=1):
        sd = torch.load(str(folder / CLIP_FILES[name]), map_location="cpu", weights_only=True)["state_dict"]
        proj = sd.pop("proj").float()
        cls = vit(sd, index, normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), 1e-5, act, True)
        cls = F.layer_norm(cls, (cls.shape[-1],), sd["norm.weight"].float(), sd["norm.bias"].float(), 1e-5)
        features.append(cls @ proj)
    embed = torch.cat(features, dim=-1)
    embed = embed - embed.mean(dim=-1, keepdim=True)
    return features, embed / embed.norm(dim=-1, keepdim=True)


@torch.no_grad()
def references(ds, preprocess, folder):
    ref = {}
    images = raw_images(torch.Generator().manual_seed(5))
    pils = [to_pil(im) for im in images]
    for pil, im in zip(pils, images):  # the 8-bit images hold the raw values exactly
        assert torch.equal(torch.from_numpy(numpy.array(pil)).permute(2, 0, 1) / 255, im)
    ref["images"] = images
    pixels = torch.cat([preprocess(pil) for pil in pils])
    assert pixels.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE), pixels.shape
    ref["pixels"] = pixels

    base = ds.base_model.model
    for i, name in enumerate(MODELS):
        # PerceptualModel.embed's own calls, before concatenation (the LoRA layers are in place in the base model)
        feature = base.extract_feats_list[i](pixels, extractor_index=i).squeeze()
        assert feature.shape == (3, FEATURE_WIDTHS[name]), (name, feature.shape)
        ref[f"features_{name.replace('_vitb16', '')}"] = feature
    ref["embeds"] = ds.embed(pixels)
    assert ref["embeds"].shape == (3, sum(FEATURE_WIDTHS.values())), ref["embeds"].shape
    ref["distances"] = torch.stack(
        [torch.cat([ds(pixels[i : i + 1], pixels[j : j + 1]) for j in range(3)]) for i in range(3)]
    )
    with ds.disable_adapter():
        ref["embeds_without_lora"] = ds.embed(pixels)
    assert not torch.equal(ds.embed(pixels), ref["embeds_without_lora"]), "the adapter is still disabled"

    # The embeddings are the normalised concatenated features; the distances their cosine distances; batching
    # (embed of all three) and single images (forward) agree.
    features = torch.cat([ref[k] for k in ("features_dino", "features_clip", "features_open_clip")], dim=-1)
    centred = features - features.mean(dim=-1, keepdim=True)
    assert torch.allclose(centred / centred.norm(dim=-1, keepdim=True), ref["embeds"], atol=1e-6)
    e = ref["embeds"]
    assert torch.allclose(1 - e @ e.T, ref["distances"], atol=1e-5), (1 - e @ e.T, ref["distances"])
    # The plain re-implementation from the files alone.
    plain_features, plain = plain_embed(folder, pixels)
    for name, got in zip(("features_dino", "features_clip", "features_open_clip"), plain_features):
        assert torch.allclose(got, ref[name], atol=1e-5, rtol=1e-4), (name, (got - ref[name]).abs().max())
    assert torch.allclose(plain, ref["embeds"], atol=1e-5), (plain - ref["embeds"]).abs().max()
    plain_without = plain_embed(folder, pixels, use_lora=False)[1]
    assert torch.allclose(plain_without, ref["embeds_without_lora"], atol=1e-5)

    for k in ("pixels", "features_dino", "features_clip", "features_open_clip", "embeds", "embeds_without_lora"):
        check_sane(k, ref[k])
        log(f"  {k:20s} {stats(ref[k])}")
    log(f"  distances: {[[round(d, 4) for d in row] for row in ref['distances'].tolist()]}")
    e0 = ref["embeds_without_lora"]
    without = 1 - e0 @ e0.T
    log(f"  distances without LoRA: {[[round(d, 4) for d in row] for row in without.tolist()]}")
    off = ref["distances"][~torch.eye(3, dtype=torch.bool)]
    assert ref["distances"].diagonal().abs().max() < 1e-5, ref["distances"]
    assert off.min() > 0.05 and (off.max() - off.min()) > 0.05, f"the distances hardly vary: {off.tolist()}"
    for k in ("features_dino", "features_clip", "features_open_clip"):
        spread = (ref[k] - ref[k].mean(dim=0)).norm(dim=-1) / ref[k].norm(dim=-1)
        assert spread.min() > 0.05, f"{k} hardly varies between images: {spread.tolist()}"
    lora_change = (ref["embeds"] - e0).norm(dim=-1)
    log(f"  |embeds - embeds_without_lora| per image: {[round(d, 4) for d in lora_change.tolist()]}")
    assert lora_change.min() > 0.1, "the LoRA hardly moves the embeddings"
    assert (without - ref["distances"]).abs().max() > 0.02, "the LoRA hardly moves the distances"
    return ref


DESCRIPTION = (
    "Reference outputs of the dreamsim package's default model (dreamsim(pretrained=True, device='cpu', cache_dir="
    "this folder, normalize_embeds=True, dreamsim_type='ensemble')), tiny (see scripts/make_dreamsim_fixture.py), "
    "float32 on CPU, eval mode. images: raw RGB [3, 3, 64, 64] in [0, 1], multiples of 1/255. pixels (stored as uint8 levels: divide by 255) = the "
    "package's preprocess(PIL image) (torchvision Resize((224, 224), bicubic) on the 8-bit PIL image, i.e. PIL's "
    "Image.resize(BICUBIC); ToTensor), stacked. The model embeds pixels with three ViTs (DINO's VisionTransformer "
    "layout: conv patch embedding 16x16 stride 16; [class token; patches] + pos_embed; pre-norm blocks x = x + "
    "attn.proj(attention(norm1(x))), x = x + mlp.fc2(act(mlp.fc1(norm2(x)))); attention with heads = width / 64 "
    "and scale head_dim^-1/2; LoRA on attn.qkv: weight + lora_alpha / r * lora_B @ lora_A), each fed the pixels "
    "normalised with its own mean/std: "
    "features_dino = the class token of dino_vitb16's LAST block's output, before the final norm (the package hooks "
    "block 11 of ViT-B's 12; this model has 2 blocks), ImageNet mean/std, LayerNorm eps 1e-6, GELU (erf); "
    "features_clip = clip_vitb16(x) @ proj: tokens + pos_embed go through pos_drop, a LayerNorm (CLIP's ln_pre), "
    "then the blocks, then the final norm of the class token, then @ proj [64, 32]; OpenAI CLIP mean/std; "
    "LayerNorm eps 1e-5; QuickGELU x * sigmoid(1.702 x) in the MLPs; "
    "features_open_clip = the same for open_clip_vitb16, with GELU (erf). "
    "embeds = model.embed(pixels): cat(features_dino, features_clip, features_open_clip) [3, 128], minus its mean "
    "over the 128 values, divided by its norm. distances[i, j] = model(pixels[i], pixels[j]) = 1 - cosine(embeds[i], "
    "embeds[j]). embeds_without_lora = model.embed(pixels) inside peft's model.disable_adapter() (the base weights "
    "alone). features_* are taken with the adapter enabled, from PerceptualModel's own extract functions."
)


def describe_file(path):
    """{key: [shape, dtype]} of a weight file, nested dicts joined with '/'."""
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        content = load_file(str(path))
    else:
        content = torch.load(str(path), map_location="cpu", weights_only=True)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}/"))
            else:
                out[prefix + k] = [list(v.shape), str(v.dtype).replace("torch.", "")]
        return out

    return flat(content)


def main():
    import peft
    import PIL
    import safetensors
    import torchvision
    import transformers

    torch.set_num_threads(1)  # tiny work; the result does not depend on it
    transformers.utils.logging.set_verbosity_error()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    log(f"building {OUT.relative_to(ROOT)}")
    model = import_dreamsim()
    originals = write_base_files(OUT)
    adapter = write_adapter(model, OUT)
    ds, preprocess = load_dreamsim(model, OUT)
    check_weights(ds, originals, adapter)

    ref = {k: v.detach().contiguous() for k, v in references(ds, preprocess, OUT).items()}
    for k, v in ref.items():
        assert v.dtype == torch.float32, (k, v.dtype)
    # The preprocessed pixels are 8-bit values (PIL's resize, then ToTensor's / 255): stored as those bytes, a
    # quarter of the float32 size; the tests divide by 255 again, which gives the same float32 values.
    levels = ref["pixels"] * 255
    assert torch.equal(levels.round(), levels) and torch.equal(levels.round().to(torch.uint8).float() / 255, ref["pixels"])
    ref["pixels"] = levels.round().to(torch.uint8)
    adapter_files = sorted(p.name for p in (OUT / LORA_DIR).iterdir())
    weight_files = [DINO_HUB_FILE, *CLIP_FILES.values(), DINO_TRAINING_FILE]
    weight_files.append(Path(LORA_DIR) / "adapter_model.safetensors")
    adapter_config = json.loads((OUT / LORA_DIR / "adapter_config.json").read_text())
    meta = {
        "description": DESCRIPTION,
        "model": {
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
            "width": WIDTH,
            "depth": DEPTH,
            "heads": HEADS,
            "mlp_ratio": 4,
            "proj_dim": PROJ_DIM,
            "dino_feature_block": DEPTH - 1,
            "models": list(MODELS),
            "feature_widths": FEATURE_WIDTHS,
        },
        "adapter_config": adapter_config,
        "lora_scale": adapter_config["lora_alpha"] / adapter_config["r"],
        "adapter_files": adapter_files,
        "files": {str(path): describe_file(OUT / path) for path in weight_files},
        "file_notes": {
            str(DINO_HUB_FILE): "float16 (the real file is float32); a plain state dict",
            "clip_vitb16_pretrain.pth.tar": "{'state_dict': ...}; float16 except proj (float32)",
            "open_clip_vitb16_pretrain.pth.tar": "{'state_dict': ...}; float16 except proj (float32)",
            DINO_TRAINING_FILE: "stand-in: only the student's projection head, never used by the ensemble",
        },
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "dreamsim": importlib.metadata.version("dreamsim"),
            "timm": importlib.metadata.version("timm"),
            "safetensors": safetensors.__version__,
            "pillow": PIL.__version__,
            "open_clip": "stubbed (not installed; only its unused import)"
            if getattr(sys.modules.get("open_clip"), "stubbed", False)
            else importlib.metadata.version("open-clip-torch"),
        },
    }
    write_references(OUT, ref, meta, 3.5e6)


if __name__ == "__main__":
    sys.exit(main())
