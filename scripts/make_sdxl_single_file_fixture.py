#!/usr/bin/env python3
"""Build the SDXL single-file fixtures: tests/fixtures/tiny-sdxl/ldm.safetensors (the tiny SDXL pipeline's weights in
the original single-file layout) and tests/fixtures/sdxl-base-ldm-keys.json (the full-size SDXL base 1.0 key map),
both checked with diffusers' own single-file conversion code.

How to run (from the repository root; CPU only, one thread, about 15 s and 2 GB of memory, no network), after
scripts/make_sdxl_fixture.py (which rewrites tests/fixtures/tiny-sdxl/ from scratch and so deletes ldm.safetensors):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_sdxl_single_file_fixture.py

It is deterministic (the values are the folder's float16 weights and a fixed logit_scale; the only random numbers,
open_clip_to_ldm's SD 2 extras, come from a seeded generator and are discarded), writes byte-identical files on every
run, and touches nothing else in tiny-sdxl/. It writes:

* tests/fixtures/tiny-sdxl/ldm.safetensors
    The folder's unet, vae, text_encoder and text_encoder_2 in the layout of Stability's generative-models (SGM)
    checkpoints such as sd_xl_base_1.0.safetensors, all float16 (like published single files; the folder's values
    are float16-representable, which is asserted, so nothing is rounded):
      - UNet under `model.diffusion_model.`, numbered like SD's LDM UNet (make_fixtures.unet_to_ldm: input_blocks /
        middle_block / output_blocks, resnets in_layers/emb_layers/out_layers/skip_connection, a transformer as
        `.1`, an upsampler after a transformer as `.2`); SDXL's added (text_time) embedding add_embedding.linear_1 ->
        label_emb.0.0, linear_2 -> label_emb.0.2 (the sequential MLP Linear, SiLU, Linear). A transformer with more
        than one block keeps diffusers' `transformer_blocks.N` names (the tiny UNet has 2 blocks in its last down
        level, in the first up level and in the mid block: transformer_layers_per_block (1, 1, 2));
      - VAE under `first_stage_model.` (make_fixtures.vae_to_ldm: decoder levels reversed, mid attention q/k/v/
        proj_out as 1x1 convolutions);
      - text_encoder (CLIP ViT-L in SDXL; transformers naming) under `conditioner.embedders.0.transformer.` +
        `text_model....` (make_fixtures.clip_to_ldm, prefix swapped); no position_ids (transformers 5 has no such
        buffer in the state dict; real files may carry it, diffusers ignores it);
      - text_encoder_2 (OpenCLIP bigG in SDXL) under `conditioner.embedders.1.model.` in OpenCLIP naming
        (make_fixtures.open_clip_to_ldm, prefix swapped): token_embedding.weight, positional_embedding,
        transformer.resblocks.{i}.{ln_1, attn.in_proj_weight / in_proj_bias (q, k, v stacked on dim 0),
        attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_final; then `text_projection` = diffusers'
        text_projection.weight transposed ([width 40, projection 56]: OpenCLIP computes x @ text_projection) and
        `logit_scale` = ln(100) rounded to float16 (4.6055; trained OpenCLIP models sit at that clamp; no SDXL
        pipeline uses it). Unlike SD 2 (whose diffusers text encoder drops OpenCLIP's last block and the
        projection, and whose single files carry them unused), SDXL's CLIPTextModelWithProjection has every layer
        and the projection, so all of them are real weights here: open_clip_to_ldm's SD 2 extras (a random block
        after the last, a random square text_projection) are discarded and replaced by the real projection.
    Validation: the file is loaded back with diffusers' own StableDiffusionXLPipeline.from_single_file(path,
    config=<the folder>, local_files_only=True, dtype=float32), and every weight of unet, vae, text_encoder and
    text_encoder_2 must be bit-identical to the folder's (StableDiffusionXLPipeline.from_pretrained(folder)). Then a
    control that this check is not vacuous: in a copy of the file, TAMPER_KEYS (label_emb.0.2, a second transformer
    block, a reversed VAE decoder level, a CLIP k_proj, an OpenCLIP fused in_proj of the last layer and the
    transposed text_projection) are doubled, and exactly the diffusers weights they map to must come back different.
    Why config=<the folder>: diffusers infers the model type of a single file from marker keys
    (single_file_utils.CHECKPOINT_KEY_NAMES); SDXL base's is conditioner.embedders.1.model.transformer.resblocks.9.
    mlp.c_proj.bias, which the 3-layer tiny encoder does not have (infer_diffusers_model_type says "v1" for this
    file, asserted below), and without `config` it would fetch SD 1.5's configs from the hub. With `config` nothing
    is inferred: the pipeline and model configs come from the folder, and only diffusers' conversion functions run
    (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, and for the encoders create_diffusers_clip_model_from_
    ldm, which picks the CLIP or the OpenCLIP conversion by which marker key's width matches the model's: here
    conditioner.embedders.0.transformer...position_embedding (32 wide) and conditioner.embedders.1.model.
    positional_embedding (40 wide), which is why the encoders' widths must differ, as 768 and 1280 do). Padding the
    encoder to 10 blocks to be detected would make the file disagree with the folder, so it is not done; a loader
    that detects SDXL by the resblocks.9 key will not recognise this file, one that looks at
    conditioner.embedders.1.model.positional_embedding or model.diffusion_model.label_emb.0.0.weight will.
    As a second, independent check, the same diffusers conversion functions are also run directly on the mapped
    tensors (see "identity check" below).

* tests/fixtures/sdxl-base-ldm-keys.json
    The full-size key map of SDXL base 1.0 with the configs committed in assets/configs/sdxl/{unet, vae,
    text_encoder, text_encoder_2}: the four models are built on the meta device (no memory, no weights), and their
    state_dict keys and shapes are mapped with exactly the functions used for the tiny file. JSON, one entry per line:
    {"description", "versions", "counts", "ignored_keys": [[ldm_key, ldm_shape, component, why], ...],
     "entries": [[ldm_key, ldm_shape, component, {diffusers_key: diffusers_shape, ...}], ...]}, sorted by LDM key;
    component is "unet", "vae", "text_encoder" or "text_encoder_2"; diffusers keys as the models' files name them
    (text encoders with the `text_model.` prefix, text_encoder_2's projection `text_projection.weight`). An entry
    maps to several diffusers keys only for OpenCLIP's fused attn.in_proj_{weight,bias} (q, k, v: rows 0..1279,
    1280..2559, 2560..3839). ignored_keys are what SDXL single files carry besides the weights and diffusers drops:
    conditioner.embedders.1.model.logit_scale and conditioner.embedders.0.transformer.text_model.embeddings.
    position_ids (the int64 0..76 buffer older transformers saved).
    Identity check (the map is verified with diffusers' code, not ours): a checkpoint is made of one int32 tensor
    per LDM key, of the LDM shape, whose values encode (the key's index, the row): index * 65536 + row along dim 0,
    broadcast (stride 0) over the other dims, so it costs almost no memory. diffusers' conversion functions
    (convert_ldm_unet_checkpoint(checkpoint, config), convert_ldm_vae_checkpoint(checkpoint, config),
    convert_ldm_clip_checkpoint(checkpoint), convert_open_clip_checkpoint(text_model, checkpoint,
    prefix="conditioner.embedders.1.model."), chosen as create_diffusers_clip_model_from_ldm chooses them, with the
    configs from_single_file passes) are run on it, and must give exactly the models' diffusers keys, no extra, no
    missing, with the models' shapes, and each value must equal our own inverse mapping of the same tensors
    (reshape; q/k/v row blocks; transpose for text_projection). A swapped pair of same-shape tensors, a wrong q/k/v
    order or an untransposed projection would therefore fail, not only a wrong name. Checked as well: diffusers'
    infer_diffusers_model_type calls the full-size key set "xl_base", and a second run with non-weight keys added
    (logit_scale, position_ids, attn_mask, denoiser.sigmas, model_ema.*, alphas_cumprod, ...) shows which of them
    diffusers' conversion drops (all but position_ids, which convert_ldm_clip_checkpoint passes through and the
    model loader then skips: no such parameter; reported in the log).

The identity check runs on the tiny mapping too, so the tiny file and the JSON come from one mapping, checked by
diffusers' conversion functions at both sizes and, for the tiny file, by diffusers' whole loader.
Note: SDXL base's text_projection is square (1280 x 1280), so a loader that forgot to transpose it would load
without a shape error; the tiny one is 40 x 56 in the file (56 x 40 in diffusers), so such a mistake cannot load it.
"""

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import torch

from make_fixtures import (
    FIXTURES,
    ROOT,
    assert_same_weights,
    clip_to_ldm,
    differing_weights,
    log,
    open_clip_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)

FOLDER = FIXTURES / "tiny-sdxl"
LDM_FILE = FOLDER / "ldm.safetensors"
KEYS_JSON = FIXTURES / "sdxl-base-ldm-keys.json"
SDXL_CONFIGS = ROOT / "assets" / "configs" / "sdxl"
MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")

UNET_P, VAE_P = "model.diffusion_model.", "first_stage_model."
CLIP_P, OPEN_CLIP_P = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
LOGIT_SCALE = 4.6052  # ln(100), OpenCLIP's clamp; stored as float16 (4.60546875)
# SDXL's added embedding (TimestepEmbedding: linear_1, SiLU, linear_2) is SGM's label_emb = Sequential(Sequential(
# Linear, SiLU, Linear)).
ADD_EMBEDDING = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}

# LDM keys doubled in the tampering control.
TAMPER_KEYS = [
    UNET_P + "label_emb.0.2.weight",
    # up_blocks.0 (2 transformer blocks per attention: transformer_layers_per_block reversed), its 2nd attention's
    # 2nd block.
    UNET_P + "output_blocks.1.1.transformer_blocks.1.attn2.to_k.weight",
    VAE_P + "decoder.up.0.block.1.conv1.weight",
    CLIP_P + "text_model.encoder.layers.1.self_attn.k_proj.weight",
    OPEN_CLIP_P + "transformer.resblocks.2.attn.in_proj_weight",  # the last layer: SD 2 would drop it, SDXL keeps it
    OPEN_CLIP_P + "text_projection",
]

# Non-weight keys SDXL single files carry (logit_scale) or may carry (position_ids, written by older transformers),
# which diffusers' loader drops (the map's "ignored_keys").
IGNORED = [
    (OPEN_CLIP_P + "logit_scale", [], "text_encoder_2",
     "OpenCLIP's contrastive temperature (a scalar); convert_open_clip_checkpoint maps only the names in "
     "DIFFUSERS_TO_LDM_MAPPING['openclip'] and transformer.*, so it is dropped"),
    (CLIP_P + "text_model.embeddings.position_ids", [1, 77], "text_encoder",
     "int64 buffer 0..76 that older transformers saved; convert_ldm_clip_checkpoint passes it through, the model "
     "loader skips it (no such parameter or persistent buffer in transformers 5)"),
]
# Further non-weight names probed (seen in LDM/SGM-era checkpoints); none may reach a converted state dict.
PROBES = [
    OPEN_CLIP_P + "attn_mask",
    "denoiser.sigmas",
    "model_ema.decay",
    "model_ema.num_updates",
    "alphas_cumprod",
    "betas",
    "logvar",
]


# ----------------------------------------------------------------------------------------------------------------
# The mapping: diffusers state dicts -> SGM single-file keys
# ----------------------------------------------------------------------------------------------------------------


def with_text_model_prefix(sd):
    """CLIPTextModel's keys as model files name them: transformers >= 5.6 flattens CLIPTextModel (no `text_model.`),
    real SDXL repositories and make_sdxl_fixture's model.safetensors have it."""
    return {k if k.startswith("text_model.") or k == "text_projection.weight" else "text_model." + k: v
            for k, v in sd.items()}


def diffusers_shapes(models):
    """{component: {diffusers key as model files name it: shape}}."""
    out = {}
    for name in MODELS:
        sd = models[name].state_dict()
        if name.startswith("text_encoder"):
            sd = with_text_model_prefix(sd)
        out[name] = {k: list(v.shape) for k, v in sd.items() if not k.endswith("position_ids")}
    return out


def reprefix(mapped, old, new):
    out = {}
    for k, v in mapped.items():
        assert k.startswith(old), k
        out[new + k[len(old):]] = v
    return out


def sdxl_to_ldm(sds, unet):
    """sds: {component: state dict} (text encoders with `text_model.`-prefixed keys). Returns {ldm_key: (component,
    diffusers source key, or several joined with '+' for a fused q/k/v, or None for logit_scale, tensor)}."""
    out = {}

    def add(component, mapped):
        for k, (src, v) in mapped.items():
            assert k not in out, k
            out[k] = (component, src, v)

    unet_sd = sds["unet"]
    added = {k: v for k, v in unet_sd.items() if k.startswith("add_embedding.")}
    assert len(added) == 4, sorted(added)
    add("unet", unet_to_ldm({k: v for k, v in unet_sd.items() if k not in added}, unet))
    label_emb = {}
    for k, v in added.items():
        (src,) = [p for p in ADD_EMBEDDING if k.startswith(p)]
        label_emb[UNET_P + ADD_EMBEDDING[src] + k[len(src):]] = (k, v)
    add("unet", label_emb)

    add("vae", vae_to_ldm(sds["vae"], sds["vae_model"]))
    te = sds["text_encoder"]
    add("text_encoder", reprefix(clip_to_ldm(te), "cond_stage_model.transformer.", CLIP_P))

    # text_encoder_2: open_clip_to_ldm maps the transformer (it asserts that it used every key it was given, so the
    # projection is taken out and mapped here); its SD 2 extras (src None: a random block after the last, a random
    # square text_projection, logit_scale) are discarded. The generator only feeds those discarded extras.
    te2 = dict(sds["text_encoder_2"])
    proj = te2.pop("text_projection.weight")
    cfg2 = sds["text_encoder_2_config"]
    body = open_clip_to_ldm(te2, cfg2.num_hidden_layers, cfg2.hidden_size, torch.Generator().manual_seed(0))
    body = {k: ("+".join("text_model." + s for s in src.split("+")), v) for k, (src, v) in body.items()
            if src is not None}
    body["cond_stage_model.model.text_projection"] = ("text_projection.weight", proj.T)
    body = reprefix(body, "cond_stage_model.model.", OPEN_CLIP_P)
    n_blocks = len({re.match(r".*\.resblocks\.(\d+)\.", k).group(1) for k in body if ".resblocks." in k})
    assert n_blocks == cfg2.num_hidden_layers, (n_blocks, cfg2.num_hidden_layers)
    add("text_encoder_2", body)
    return out


def to_diffusers(ldm_key, src, tensor, shapes):
    """Our inverse of sdxl_to_ldm for one entry: {diffusers_key: tensor}."""
    parts = src.split("+")
    if len(parts) > 1:  # OpenCLIP's fused q, k, v
        return {p: t for p, t in zip(parts, tensor.chunk(len(parts), dim=0), strict=True)}
    if ldm_key.endswith(".text_projection"):
        return {src: tensor.T}
    return {src: tensor.reshape(shapes[src])}


# ----------------------------------------------------------------------------------------------------------------
# diffusers' conversion functions, run directly
# ----------------------------------------------------------------------------------------------------------------


def diffusers_convert(checkpoint, models, unet_config, vae_config):
    """The state dicts diffusers' single-file loader would build from `checkpoint` for each model (before loading,
    i.e. before unknown keys are skipped), text encoders with `text_model.` keys. The encoders' conversions are
    chosen as create_diffusers_clip_model_from_ldm chooses them (asserted)."""
    from diffusers.loaders import single_file_utils as sfu

    out = {
        "unet": sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config),
        "vae": sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config),
    }
    for name in ("text_encoder", "text_encoder_2"):
        model = models[name]
        assert sfu.is_clip_model_in_single_file(type(model), checkpoint), name
        text_model = model.text_model if hasattr(model, "text_model") else model
        width = text_model.embeddings.position_embedding.weight.shape[-1]
        # create_diffusers_clip_model_from_ldm's branches, in its order.
        assert not sfu.is_clip_model(checkpoint) and not sfu.is_open_clip_model(checkpoint)
        clip_sdxl = sfu.is_clip_sdxl_model(checkpoint) and checkpoint[
            sfu.CHECKPOINT_KEY_NAMES["clip_sdxl"]].shape[-1] == width
        sd3 = sfu.is_clip_sd3_model(checkpoint)
        open_clip_sdxl = sfu.is_open_clip_sdxl_model(checkpoint) and checkpoint[
            sfu.CHECKPOINT_KEY_NAMES["open_clip_sdxl"]].shape[-1] == width
        if name == "text_encoder":
            assert clip_sdxl, "diffusers would not take the CLIP (embedders.0) conversion for text_encoder"
            out[name] = sfu.convert_ldm_clip_checkpoint(checkpoint)
        else:
            assert not clip_sdxl and not sd3 and open_clip_sdxl, "diffusers would not take the OpenCLIP conversion"
            out[name] = sfu.convert_open_clip_checkpoint(model, checkpoint, prefix=OPEN_CLIP_P)
    return out


def identity_tensor(index, shape):
    """int32, values index * 65536 + row (along dim 0), broadcast over the other dims (stride 0)."""
    if len(shape) == 0:
        return torch.tensor(index * 65536, dtype=torch.int32)
    assert shape[0] < 65536 and index < 32000, (index, shape)
    rows = index * 65536 + torch.arange(shape[0], dtype=torch.int32)
    return rows.reshape(shape[0], *[1] * (len(shape) - 1)).expand(*shape)


def identity_check(label, mapped, models, unet_config, vae_config, expect_type=None):
    """Run diffusers' conversion functions on identity tensors of the LDM keys and shapes; they must reproduce the
    models' keys and shapes exactly, with every value where our mapping puts it."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    keys = sorted(mapped)
    checkpoint = {k: identity_tensor(i, list(mapped[k][2].shape)) for i, k in enumerate(keys)}
    shapes = diffusers_shapes(models)
    expected = {name: {} for name in MODELS}
    for k in keys:
        component, src, _ = mapped[k]
        if src is None:
            continue
        for d, t in to_diffusers(k, src, checkpoint[k], shapes[component]).items():
            assert d not in expected[component], d
            expected[component][d] = t
    model_type = infer_diffusers_model_type(checkpoint)
    if expect_type is not None:
        assert model_type == expect_type, (label, model_type)

    converted = diffusers_convert(checkpoint, models, unet_config, vae_config)
    for name in MODELS:
        got, want = converted[name], expected[name]
        assert set(want) == set(shapes[name]), (label, name, "our map", sorted(set(want) ^ set(shapes[name]))[:10])
        assert set(got) == set(want), (label, name, "extra", sorted(set(got) - set(want))[:10], "missing",
                                       sorted(set(want) - set(got))[:10])
        for d, t in want.items():
            assert list(got[d].shape) == shapes[name][d], (label, name, d, list(got[d].shape), shapes[name][d])
            assert torch.equal(got[d], t), (label, name, d, "holds other values than our map puts there")
        log(f"  {label}: diffusers' conversion gives {name}'s {len(got)} keys, shapes and values exactly")
    del converted

    # Non-weight keys: which ones diffusers' conversion lets through.
    probes = {k: torch.zeros(s, dtype=torch.int64 if k.endswith("position_ids") else torch.float32)
              for k, s, _, _ in IGNORED}
    probes.update({k: torch.zeros([1]) for k in PROBES})
    probes.update({k: v for k, v in checkpoint.items() if k not in probes})
    converted = diffusers_convert(probes, models, unet_config, vae_config)
    leaked = {name: sorted(set(converted[name]) - set(expected[name])) for name in MODELS}
    assert leaked == {"unet": [], "vae": [], "text_encoder": ["text_model.embeddings.position_ids"],
                      "text_encoder_2": []}, leaked
    for name in MODELS:
        assert set(converted[name]) - set(leaked[name]) == set(expected[name]), name
    log(f"  {label}: infer_diffusers_model_type says {model_type!r}; non-weight keys "
        f"{[k for k, *_ in IGNORED] + PROBES} all dropped by the conversion except {leaked['text_encoder']} (passed "
        "through by convert_ldm_clip_checkpoint, not a parameter, so skipped when loading)")
    return model_type


# ----------------------------------------------------------------------------------------------------------------
# 1. tests/fixtures/tiny-sdxl/ldm.safetensors
# ----------------------------------------------------------------------------------------------------------------


def load_folder():
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(FOLDER), local_files_only=True, dtype=torch.float32,
                                                     add_watermarker=False)
    return {name: getattr(pipe, name) for name in MODELS}


def load_single_file(path):
    """diffusers' own SDXL single-file loader, offline, with the folder's configs."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(FOLDER), local_files_only=True,
                                                      dtype=torch.float32, add_watermarker=False)
    return {name: getattr(pipe, name) for name in MODELS}


def mapping_of(models):
    sds = {name: models[name].state_dict() for name in MODELS}
    sds["text_encoder"] = with_text_model_prefix(sds["text_encoder"])
    sds["vae_model"] = models["vae"]
    sds["text_encoder_2_config"] = models["text_encoder_2"].config
    mapped = sdxl_to_ldm(sds, models["unet"])
    mapped[OPEN_CLIP_P + "logit_scale"] = ("text_encoder_2", None, torch.tensor(LOGIT_SCALE).half().float())
    return mapped


def model_key(model, key):
    """A `text_model.`-prefixed diffusers key as `model`'s state dict names it."""
    names = model.state_dict()
    if key in names:
        return key
    assert key.startswith("text_model.") and key[len("text_model."):] in names, key
    return key[len("text_model."):]


def make_tiny():
    from safetensors.torch import load_file, save_file

    log(f"building {LDM_FILE.relative_to(ROOT)}")
    originals = load_folder()
    mapped = mapping_of(originals)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, (_, _, v) in mapped.items()}
    for k, (_, _, v) in mapped.items():
        assert torch.equal(tensors[k].float(), v.float()), f"{k} is not float16-representable"
    # Every folder weight is in the file once (position_ids aside).
    for name in MODELS:
        used = {model_key(originals[name], part) for component, src, _ in mapped.values()
                if component == name and src is not None for part in src.split("+")}
        want = {k for k in originals[name].state_dict() if not k.endswith("position_ids")}
        assert used == want, (name, sorted(used ^ want)[:10])
    save_file(tensors, str(LDM_FILE), metadata={"format": "pt"})
    os.chmod(LDM_FILE, 0o644)  # safetensors writes 0600
    counts = {c: sum(1 for cc, _, _ in mapped.values() if cc == c) for c in MODELS}
    log(f"wrote {LDM_FILE.relative_to(ROOT)}: {len(tensors)} float16 tensors {counts}, "
        f"{LDM_FILE.stat().st_size / 1e3:.0f} kB")

    reloaded = load_file(str(LDM_FILE))
    assert all(v.dtype == torch.float16 for v in reloaded.values()) and set(reloaded) == set(tensors)

    # The identity check on the tiny mapping (diffusers' conversion functions, run directly).
    unet_config = dict(originals["unet"].config)
    vae_config = dict(originals["vae"].config)
    tiny_type = identity_check("tiny", mapped, originals, unet_config, vae_config)
    assert tiny_type == "v1", tiny_type  # not recognised as SDXL: hence config=<the folder> below

    # diffusers' own loader: bit-identical weights.
    models = load_single_file(LDM_FILE)
    for name in MODELS:
        assert_same_weights(f"sdxl ldm {name}", originals[name].state_dict(), models[name])
        assert all(p.dtype == torch.float32 for p in models[name].parameters()), name
    del models
    log("  StableDiffusionXLPipeline.from_single_file(ldm.safetensors, config=tiny-sdxl): unet, vae, text_encoder "
        "and text_encoder_2 bit-identical to the folder's")

    # Tampering control: exactly the mapped diffusers weights change.
    expected = {name: set() for name in MODELS}
    for key in TAMPER_KEYS:
        component, src, _ = mapped[key]
        reloaded[key] = reloaded[key] * 2
        expected[component].update(model_key(originals[component], s) for s in src.split("+"))
    assert all(expected.values()), expected
    with tempfile.TemporaryDirectory() as tmp:
        tampered = Path(tmp) / "ldm.safetensors"
        save_file(reloaded, str(tampered), metadata={"format": "pt"})
        models = load_single_file(tampered)
        for name in MODELS:
            diff = differing_weights(f"sdxl tampered ldm {name}", originals[name].state_dict(), models[name])
            assert diff == expected[name], (name, sorted(diff), sorted(expected[name]))
    log(f"  tampering control passed: doubling {len(TAMPER_KEYS)} LDM tensors changed exactly "
        f"{sum(map(len, expected.values()))} diffusers weights: { {k: sorted(v) for k, v in expected.items()} }")


# ----------------------------------------------------------------------------------------------------------------
# 2. tests/fixtures/sdxl-base-ldm-keys.json
# ----------------------------------------------------------------------------------------------------------------


def meta_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_config = UNet2DConditionModel.load_config(str(SDXL_CONFIGS / "unet"))
    vae_config = AutoencoderKL.load_config(str(SDXL_CONFIGS / "vae"))
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(unet_config),
            "vae": AutoencoderKL.from_config(vae_config),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(str(SDXL_CONFIGS / "text_encoder"))),
            "text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(str(SDXL_CONFIGS / "text_encoder_2"))),
        }
    for name, model in models.items():
        assert all(v.device.type == "meta" for v in model.state_dict().values()), name
    # What from_single_file passes to the conversion functions: the loaded config dicts.
    return models, dict(unet_config), dict(vae_config)


def make_keys_json():
    import diffusers
    import transformers

    log(f"building {KEYS_JSON.relative_to(ROOT)}")
    models, unet_config, vae_config = meta_models()
    mapped = mapping_of(models)
    del mapped[OPEN_CLIP_P + "logit_scale"]  # listed under ignored_keys
    assert models["unet"].config.transformer_layers_per_block == [1, 2, 10]
    identity_check("sdxl-base", mapped, models, unet_config, vae_config, expect_type="xl_base")

    shapes = diffusers_shapes(models)
    entries = []
    for k in sorted(mapped):
        component, src, t = mapped[k]
        diff = {d: list(v.shape) for d, v in to_diffusers(k, src, t, shapes[component]).items()}
        for d, s in diff.items():
            assert shapes[component][d] == s, (k, d, s)
        entries.append([k, list(t.shape), component, diff])
    counts = {c: {"ldm_keys": sum(1 for e in entries if e[2] == c),
                  "diffusers_keys": sum(len(e[3]) for e in entries if e[2] == c)} for c in MODELS}
    for c in MODELS:
        assert counts[c]["diffusers_keys"] == len(shapes[c]), (c, counts[c], len(shapes[c]))
    doc = {
        "description": "Key map of Stable Diffusion XL base 1.0 between the original single-file layout (Stability's "
        "generative-models, as in sd_xl_base_1.0.safetensors) and diffusers, for the configs in "
        "assets/configs/sdxl/{unet,vae,text_encoder,text_encoder_2}. entries: [ldm_key, ldm_shape, component, "
        "{diffusers_key: diffusers_shape}], sorted by ldm_key; diffusers keys as the models' files name them (text "
        "encoders with `text_model.`). Several diffusers keys only for OpenCLIP's fused attn.in_proj_{weight,bias}: "
        "q, k, v are its three row blocks in that order. Other shape changes: the VAE's mid-block attention "
        "q/k/v/proj_out weights are [C, C, 1, 1] convolutions in the file, [C, C] in diffusers; "
        "conditioner.embedders.1.model.text_projection is diffusers' text_projection.weight transposed. "
        "ignored_keys: non-weight keys SDXL single files carry (logit_scale) or may carry (position_ids) that diffusers' "
        "loader drops. Written and checked by "
        "scripts/make_sdxl_single_file_fixture.py: the models are built on the meta device, and diffusers' own "
        "conversion functions reproduce exactly these keys, shapes and correspondences.",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "counts": counts,
        "ignored_keys": [[k, s, c, why] for k, s, c, why in IGNORED],
        "entries": entries,
    }
    dump = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    lines = ["{"]
    for field in ("description", "versions", "counts"):
        lines.append(f"  {dump(field)}: {dump(doc[field])},")
    for field in ("ignored_keys", "entries"):
        rows = [f"    {dump(e)}" for e in doc[field]]
        lines.append(f"  {dump(field)}: [\n" + ",\n".join(rows) + "\n  ]" + ("," if field != "entries" else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    KEYS_JSON.write_text(text)
    log(f"wrote {KEYS_JSON.relative_to(ROOT)}: {len(entries)} entries {counts}, {len(text.encode()) / 1e3:.0f} kB")


def main():
    import diffusers
    import transformers

    torch.set_num_threads(1)
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    assert (FOLDER / "model_index.json").exists(), "run scripts/make_sdxl_fixture.py first"
    with torch.no_grad():
        make_tiny()
        make_keys_json()


if __name__ == "__main__":
    sys.exit(main())
