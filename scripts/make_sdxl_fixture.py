#!/usr/bin/env python3
"""Build tests/fixtures/tiny-sdxl: a tiny random Stable Diffusion XL pipeline (diffusers' StableDiffusionXLPipeline)
in diffusers layout and its reference outputs, which the Rust SDXL implementation is checked against.

How to run (from the repository root; CPU only, one thread, a few seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_sdxl_fixture.py

It is deterministic (fixed seeds, float32 on CPU) and rewrites, from scratch, tests/fixtures/tiny-sdxl/ (what
StableDiffusionXLPipeline.save_pretrained writes, the tokenizer folders as the SDXL hub repositories ship them):

* model_index.json: StableDiffusionXLPipeline, force_zeros_for_empty_prompt true (SDXL base's), no image encoder
  or feature extractor.
* unet/: UNet2DConditionModel with SDXL base's structure, shrunk: down blocks (DownBlock2D, CrossAttnDownBlock2D,
  CrossAttnDownBlock2D), up blocks (CrossAttnUpBlock2D, CrossAttnUpBlock2D, UpBlock2D), UNetMidBlock2DCrossAttn,
  2 layers per block, linear proj_in/proj_out, addition_embed_type "text_time".
    - block_out_channels (8, 16, 24): distinct, divisible by norm_num_groups 8, as small as that allows (the UNet is
      most of the folder's size);
    - attention_head_dim (1, 2, 4): as in diffusers' SDXL config this is the number of heads per block (SDXL base:
      (5, 10, 20), i.e. 64-wide heads), so the head widths are 16/2 = 8 and 24/4 = 6 (the mid block uses the
      last): the head count differs from the head width in every block that has attention, and per block;
    - transformer_layers_per_block (1, 1, 2) (SDXL base: (1, 2, 10)): per block, so the list matters (the up blocks
      use it reversed, the mid block its last entry; the first entry belongs to a block without attention and is
      unused). (1, 2, 3) would add 250 kB, more than the folder can hold;
    - cross_attention_dim 72 = text_encoder width 32 + text_encoder_2 width 40 (SDXL: 768 + 1280; the two
      penultimate hidden states are concatenated);
    - addition_time_embed_dim 8 (SDXL: 256): each of the six time ids gets an 8-wide sinusoidal embedding;
      projection_class_embeddings_input_dim 104 = text_encoder_2's projection_dim 56 + 6 * 8 (SDXL: 1280 + 6 * 256),
      unlike cross_attention_dim, so the two cannot be mixed up;
    - sample_size 16 (16x16 latents, i.e. 32x32 images with this VAE), norm_num_groups 8.
* text_encoder/: CLIPTextModel like tiny-sd1's: width 32, 2 layers, 4 heads (width 8), MLP 64, quick_gelu (SDXL's
  first encoder is OpenAI's CLIP ViT-L, quick_gelu). model.safetensors has the `text_model.`-prefixed key names of
  real SDXL repositories (transformers >= 5.6 saves CLIPTextModel without it; make_fixtures does the same rewrite).
* text_encoder_2/: CLIPTextModelWithProjection (SDXL's OpenCLIP bigG): width 40, 3 layers, 2 heads (width 20),
  MLP 80, gelu, text_projection 40 -> 56 without bias. Every width, depth, head count and head width differs from
  text_encoder's, so mixing their configs up cannot go unnoticed; 3 layers so that the penultimate layer (what SDXL
  conditions on) is not the first; width 40 rather than 48 keeps the folder under 1.5 MB (the token embeddings of
  the 1514-token vocabulary are most of each encoder).
  Both configs carry the token ids of the real SDXL configs (bos 0, eos 2, pad 1, copied from the original CLIP
  configs and wrong for CLIP's vocabulary): with eos_token_id == 2 transformers takes the pooled output at
  argmax(input_ids), i.e. at the first eos (the highest id; tokenizer pads with eos, tokenizer_2 with id 0).
* tokenizer/, tokenizer_2/: CLIP's vocabulary reduced to its first 1000 merges (make_fixtures' tiny vocabulary, 1514
  tokens, bos 1512, eos 1513), vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json,
  model_max_length 77. As in SDXL base, tokenizer pads with "<|endoftext|>" (1513) and tokenizer_2 with "!" (id 0).
* vae/: make_fixtures.tiny_vae (block_out_channels (8, 16), one halving: 16x16 latents <-> 32x32 images) with SDXL's
  scaling_factor 0.13025 and force_upcast true.
* scheduler/: DDIMScheduler with SDXL base's noise schedule and spacing (scaled_linear 0.00085 .. 0.012, 1000 steps,
  steps_offset 1, timestep_spacing "leading", epsilon, set_alpha_to_one false, clip_sample false). SDXL base ships
  EulerDiscreteScheduler with these settings; the fixture uses DDIM because the Rust side samples with DDIM from
  the folder's scheduler config.
Stored dtypes: unet, text_encoder, text_encoder_2 and vae are all float16, to keep the folder under 1.5 MB (see
FLOAT16_COMPONENTS); the values are float16-representable (perturb_ rounds them), so nothing changes numerically, and
a loader must upcast. Every reference comes from the pipeline re-loaded from the folder in float32
(StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float32)), checked weight by weight against the
float32 model that was saved.

* reference.safetensors + reference.json: outputs of diffusers/transformers in float32 on CPU from that re-loaded
  pipeline (reference.json describes every tensor under `tensor_descriptions`, its shape and dtype under `tensors`):
    - the prompt's and the negative prompts' token ids for both tokenizers, pipe.encode_prompt's four outputs for
      "a photo of a dog" with negative_prompt=None (zeros: force_zeros_for_empty_prompt), the negative embeddings
      for "a cat", and the pooled one for an explicit "" (which is encoded, not zeroed: diffusers zeroes only
      negative_prompt=None);
    - add_time_ids as __call__ builds them for a 32x32 image, and for original_size (256, 192), crops (8, 16). The
      images are 32x32 (not SDXL's 1024x1024, nor 128x128 as an 8x VAE would give 16x16 latents): tiny_vae halves
      once, and 32 = UNet sample_size 16 x 2 is the pipeline's default height and width;
    - one UNet call (batch [uncond, cond], timestep 500) with its time embedding, added embedding (and its input),
      their sum and the mid block's output (the call's encoder_hidden_states, cat([negative_prompt_embeds,
      prompt_embeds]), is not stored);
    - a 10-step CFG DDIM run of the pipeline from fixed latents (guidance 5), its latents and its image;
    - a raw VAE decode.

Weights are random, then perturbed (make_fixtures.perturb_: non-trivial norms, every weight moved by noise) and
rounded to float16-representable values.
"""

import shutil
import sys
import tempfile

import torch

from make_fixtures import (
    EOS,
    FIXTURES,
    MAX_LEN,
    TINY_VOCAB_MERGES,
    assert_same_weights,
    check_sane,
    encode,
    load_tokenizer,
    log,
    perturb_,
    stats,
    tiny_vae,
    write_references,
    write_tokenizer_configs,
    write_vocab_files,
)

FOLDER = FIXTURES / "tiny-sdxl"
MAX_BYTES = 1.5e6
VOCAB_SIZE = 512 + TINY_VOCAB_MERGES + 2
PAD_1, PAD_2 = EOS, "!"  # SDXL base: tokenizer pads with <|endoftext|>, tokenizer_2 with "!" (id 0)
# The token ids of SDXL base's text encoder configs (copied from the original CLIP configs; not CLIP's vocabulary's).
CONFIG_TOKEN_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
TEXT_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    hidden_act="quick_gelu", projection_dim=32)
TEXT_ENCODER_2 = dict(hidden_size=40, num_hidden_layers=3, num_attention_heads=2, intermediate_size=80,
                      hidden_act="gelu", projection_dim=56)
TIME_EMBED_DIM = 8
UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16, 24),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(1, 2, 4),
    transformer_layers_per_block=(1, 1, 2),
    use_linear_projection=True,
    cross_attention_dim=TEXT_ENCODER["hidden_size"] + TEXT_ENCODER_2["hidden_size"],
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=TEXT_ENCODER_2["projection_dim"] + 6 * TIME_EMBED_DIM,
    norm_num_groups=8,
)
# Widths used in checks and descriptions.
W1, W2, P2 = TEXT_ENCODER["hidden_size"], TEXT_ENCODER_2["hidden_size"], TEXT_ENCODER_2["projection_dim"]
L1, L2 = TEXT_ENCODER["num_hidden_layers"], TEXT_ENCODER_2["num_hidden_layers"]
TD, TE = TIME_EMBED_DIM, 4 * UNET["block_out_channels"][0]  # time_embed_dim = 4 * block_out_channels[0]
ADD_IN = UNET["projection_class_embeddings_input_dim"]
SCALING_FACTOR = 0.13025
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
    set_alpha_to_one=False,
    clip_sample=False,
)
FLOAT16_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")
MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")

PROMPT = "a photo of a dog"
NEGATIVE = "a cat"
HEIGHT = WIDTH = 32  # UNet sample_size 16 x the VAE's factor 2: the pipeline's default size
CUSTOM_ORIGINAL_SIZE, CUSTOM_CROPS = (256, 192), (8, 16)
UNET_TIMESTEP = 500
GUIDANCE_SCALE = 5.0
STEPS = 10


def build():
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    gen = torch.Generator().manual_seed(3031)
    torch.manual_seed(3030)
    unet = UNet2DConditionModel(**UNET)
    perturb_(unet, gen)

    common = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_LEN, **CONFIG_TOKEN_IDS)
    torch.manual_seed(3032)
    text_encoder = CLIPTextModel(CLIPTextConfig(**common, **TEXT_ENCODER))
    perturb_(text_encoder, gen)
    torch.manual_seed(3033)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**common, **TEXT_ENCODER_2))
    perturb_(text_encoder_2, gen)

    torch.manual_seed(3034)
    vae = tiny_vae(HEIGHT)
    vae.register_to_config(scaling_factor=SCALING_FACTOR, force_upcast=True)
    perturb_(vae, gen)

    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_files(tmp, TINY_VOCAB_MERGES)
        tokenizer = load_tokenizer(tmp, pad_token=PAD_1)
        tokenizer_2 = load_tokenizer(tmp, pad_token=PAD_2)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def save(pipe):
    from safetensors.torch import load_file, save_file

    originals = {name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()} for name in MODELS}
    for name in FLOAT16_COMPONENTS:
        getattr(pipe, name).to(torch.float16)
    if FOLDER.exists():
        shutil.rmtree(FOLDER)
    pipe.save_pretrained(str(FOLDER), safe_serialization=True)

    # Tokenizers: vocab.json + merges.txt + configs like the SDXL hub repositories (transformers 5 writes only a
    # tokenizer.json, which real SDXL folders don't have).
    for sub, pad in (("tokenizer", PAD_1), ("tokenizer_2", PAD_2)):
        tok_dir = FOLDER / sub
        shutil.rmtree(tok_dir)
        assert write_vocab_files(tok_dir, TINY_VOCAB_MERGES) == VOCAB_SIZE
        write_tokenizer_configs(tok_dir, pad)

    # text_encoder: real SDXL repositories use `text_model.`-prefixed keys; transformers >= 5.6 saves the flattened
    # CLIPTextModel without it. Rewrite with the prefix (transformers loads both). text_encoder_2
    # (CLIPTextModelWithProjection) is saved as real repositories have it: text_model.* and text_projection.weight.
    te_file = FOLDER / "text_encoder" / "model.safetensors"
    te = load_file(str(te_file))
    te = {k if k.startswith("text_model.") else "text_model." + k: v.contiguous() for k, v in te.items()}
    save_file(te, str(te_file), metadata={"format": "pt"})
    te2 = load_file(str(FOLDER / "text_encoder_2" / "model.safetensors"))
    assert all(k.startswith("text_model.") or k == "text_projection.weight" for k in te2), sorted(te2)[:5]
    assert "text_projection.weight" in te2
    for name in FLOAT16_COMPONENTS:
        files = list((FOLDER / name).glob("*.safetensors"))
        assert len(files) == 1 and all(v.dtype == torch.float16 for v in load_file(str(files[0])).values()), name
    return originals


def load():
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(FOLDER), local_files_only=True, dtype=torch.float32, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.watermark is None
    return pipe


def ids_of(tok, text):
    return torch.tensor([encode(tok, text)], dtype=torch.int64)


def text_encoder_outputs(te, ids):
    """(penultimate layer's output, pooled output before any projection, position of the first eos) of a CLIP text
    encoder, computed with forward hooks on its layers, as a check of what encode_prompt takes from its outputs."""
    model = te.text_model if hasattr(te, "text_model") else te
    seen = []
    hooks = [layer.register_forward_hook(lambda _m, _i, o: seen.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.encoder.layers]
    out = te(ids, output_hidden_states=True)
    for h in hooks:
        h.remove()
    assert len(seen) == len(model.encoder.layers)
    # hidden_states = (embeddings, layer 0, ..., layer n-1), the last without the final layer norm.
    assert len(out.hidden_states) == len(seen) + 1 and torch.equal(out.hidden_states[-2], seen[-2])
    assert torch.equal(out.hidden_states[-1], seen[-1])
    final = model.final_layer_norm(seen[-1])
    assert torch.equal(out.last_hidden_state, final)
    eos = (ids[0] == VOCAB_SIZE - 1).nonzero()[0].item()  # the first eos
    assert ids[0].argmax().item() == eos
    pooled = final[:, eos]
    return seen[-2], pooled, eos


@torch.no_grad()
def references(pipe):
    gen = torch.Generator().manual_seed(4040)
    ref = {}
    tok1, tok2, te1, te2 = pipe.tokenizer, pipe.tokenizer_2, pipe.text_encoder, pipe.text_encoder_2
    assert (tok1.pad_token, tok1.pad_token_id) == (EOS, VOCAB_SIZE - 1), (tok1.pad_token, tok1.pad_token_id)
    assert (tok2.pad_token, tok2.pad_token_id) == ("!", 0), (tok2.pad_token, tok2.pad_token_id)
    assert tok1.model_max_length == tok2.model_max_length == MAX_LEN

    # ---- text
    for suffix, text in (("", PROMPT), ("neg_", NEGATIVE), ("empty_", "")):
        ref[f"{suffix}ids_1"], ref[f"{suffix}ids_2"] = ids_of(tok1, text), ids_of(tok2, text)
    assert not torch.equal(ref["ids_1"], ref["ids_2"])  # same text, different padding
    assert te1.config.hidden_size == W1 and te2.config.hidden_size == W2

    def encode_prompt(negative):
        return pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                  negative_prompt=negative)

    pe, ne, pp, npp = encode_prompt(None)
    ref["prompt_embeds"], ref["negative_prompt_embeds"] = pe, ne
    ref["pooled_prompt_embeds"], ref["negative_pooled_prompt_embeds"] = pp, npp
    assert not ne.any() and not npp.any(), "force_zeros_for_empty_prompt: the negative embeddings must be zeros"
    pe_cat, ne_cat, pp_cat, npp_cat = encode_prompt(NEGATIVE)
    assert torch.equal(pe_cat, pe) and torch.equal(pp_cat, pp)
    ref["neg_prompt_embeds"], ref["neg_pooled_prompt_embeds"] = ne_cat, npp_cat
    # An explicit "" is encoded like any text, not zeroed (diffusers zeroes only negative_prompt=None). Only its
    # pooled embedding is stored (the encoding itself is checked by "a cat"; the folder must stay small).
    _, ne_empty, _, npp_empty = encode_prompt("")
    assert ne_empty.any() and npp_empty.any(), "an explicit '' is encoded, not zeroed"
    ref["empty_pooled_prompt_embeds"] = npp_empty

    # What encode_prompt is: each encoder's penultimate hidden state (no final layer norm), concatenated; the pooled
    # output is text_encoder_2's final-layer-normed last hidden state at the first eos, through text_projection.
    eos_positions = {}
    for prefix, embeds, pooled in (("", pe, pp), ("neg_", ne_cat, npp_cat), ("empty_", ne_empty, npp_empty)):
        h1, _, eos1 = text_encoder_outputs(te1, ref[f"{prefix}ids_1"])
        h2, pooled2, eos2 = text_encoder_outputs(te2, ref[f"{prefix}ids_2"])
        assert eos1 == eos2
        eos_positions[prefix.rstrip("_") or "prompt"] = eos2
        assert torch.equal(embeds, torch.cat([h1, h2], dim=-1)), prefix
        assert torch.allclose(pooled, te2.text_projection(pooled2), atol=1e-6, rtol=0), prefix

    for k in ("prompt_embeds", "neg_prompt_embeds"):
        check_sane(f"{k}[..., :{W1}] (text_encoder)", ref[k][..., :W1])
        check_sane(f"{k}[..., {W1}:] (text_encoder_2)", ref[k][..., W1:])
        log(f"  {k:30s} te1 {stats(ref[k][..., :W1])} | te2 {stats(ref[k][..., W1:])}")
    for k in ("pooled_prompt_embeds", "neg_pooled_prompt_embeds", "empty_pooled_prompt_embeds"):
        check_sane(k, ref[k])
        log(f"  {k:30s} {stats(ref[k])}")
    # Both encoders see the text: each half differs between the prompt and the negative.
    assert not torch.allclose(pe[..., :W1], ne_cat[..., :W1], atol=1e-2)
    assert not torch.allclose(pe[..., W1:], ne_cat[..., W1:], atol=1e-2)
    assert not torch.allclose(pp, npp_cat, atol=1e-2)

    # ---- time ids
    proj_dim = te2.config.projection_dim
    add_time_ids = pipe._get_add_time_ids((HEIGHT, WIDTH), (0, 0), (HEIGHT, WIDTH), dtype=torch.float32,
                                          text_encoder_projection_dim=proj_dim)
    custom = pipe._get_add_time_ids(CUSTOM_ORIGINAL_SIZE, CUSTOM_CROPS, (HEIGHT, WIDTH), dtype=torch.float32,
                                    text_encoder_projection_dim=proj_dim)
    assert add_time_ids.tolist() == [[HEIGHT, WIDTH, 0, 0, HEIGHT, WIDTH]]
    assert custom.tolist() == [[*CUSTOM_ORIGINAL_SIZE, *CUSTOM_CROPS, HEIGHT, WIDTH]]
    ref["add_time_ids"], ref["add_time_ids_custom"] = add_time_ids, custom

    # ---- one UNet call
    unet = pipe.unet
    ref["unet_sample"] = torch.randn([2, 4, 16, 16], generator=gen)
    unet_ehs = torch.cat([ne, pe])
    ref["unet_text_embeds"] = torch.cat([npp, pp])
    ref["unet_time_ids"] = add_time_ids.repeat(2, 1)
    captured = {}
    hooks = [
        unet.mid_block.register_forward_hook(lambda m, i, o: captured.__setitem__("mid", o)),
        unet.time_embedding.register_forward_hook(lambda m, i, o: captured.__setitem__("time_emb", o)),
        unet.add_embedding.register_forward_hook(lambda m, i, o: captured.update(add_in=i[0], aug=o)),
        unet.down_blocks[0].register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("emb", kw["temb"]), with_kwargs=True
        ),
    ]

    def call_unet(ehs, text_embeds, time_ids):
        return unet(ref["unet_sample"], UNET_TIMESTEP, encoder_hidden_states=ehs,
                    added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample

    ref["unet_out"] = call_unet(unet_ehs, ref["unet_text_embeds"], ref["unet_time_ids"])
    for h in hooks:
        h.remove()
    ref["unet_mid"] = captured["mid"]
    ref["unet_time_emb"] = captured["time_emb"]
    ref["unet_add_embeds"] = captured["add_in"]
    ref["unet_aug_emb"] = captured["aug"]
    ref["unet_emb"] = captured["emb"]
    # emb = time_embedding(time_proj(t)) + add_embedding(cat(text_embeds, add_time_proj(time_ids).reshape(B, -1)))
    assert torch.equal(ref["unet_emb"], ref["unet_time_emb"] + ref["unet_aug_emb"])
    assert torch.equal(ref["unet_add_embeds"][:, :proj_dim], ref["unet_text_embeds"])
    sinus = unet.add_time_proj(ref["unet_time_ids"].flatten()).reshape(2, -1)
    assert torch.equal(ref["unet_add_embeds"][:, proj_dim:], sinus)
    # Every conditioning input matters: each encoder's half, the pooled embedding, the time ids.
    ehs, text_embeds, time_ids, base = unet_ehs, ref["unet_text_embeds"], ref["unet_time_ids"], ref["unet_out"]
    for what, args in {
        "text_encoder half": (torch.cat([ehs[..., :W1] * 0, ehs[..., W1:]], -1), text_embeds, time_ids),
        "text_encoder_2 half": (torch.cat([ehs[..., :W1], ehs[..., W1:] * 0], -1), text_embeds, time_ids),
        "pooled": (ehs, text_embeds * 0, time_ids),
        "time ids": (ehs, text_embeds, custom.repeat(2, 1)),
    }.items():
        change = (call_unet(*args) - base)[1].abs().max().item()
        log(f"  unet_out[1] moves by up to {change:.4f} without/with another {what}")
        assert change > 1e-3, f"the UNet ignores the {what}"
    # CFG makes a difference: the cond and uncond predictions differ.
    assert (base[1] - base[0]).std() > 0.05 * base.std(), stats(base[1] - base[0])

    # ---- the pipeline: 10-step CFG DDIM from fixed latents
    sched = pipe.scheduler
    assert sched.init_noise_sigma == 1.0
    ref["ddim_init_latents"] = torch.randn([1, 4, 16, 16], generator=gen)
    first = {}

    def first_call(_m, args, kwargs):
        if not first:
            first.update(sample=args[0].clone(), t=args[1], ehs=kwargs["encoder_hidden_states"],
                         added=dict(kwargs["added_cond_kwargs"]))

    hook = unet.register_forward_pre_hook(first_call, with_kwargs=True)
    call = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE_SCALE, height=HEIGHT, width=WIDTH)
    ref["ddim_latents"] = pipe(**call, latents=ref["ddim_init_latents"].clone(), output_type="latent").images
    hook.remove()
    ref["ddim_timesteps"] = sched.timesteps.clone().to(torch.int64)
    assert ref["ddim_timesteps"].tolist() == list(range(901, 0, -100)), ref["ddim_timesteps"]
    # What the loop saw first: the init latents unscaled (init_noise_sigma 1, DDIM's scale_model_input is the
    # identity), doubled for CFG; [uncond, cond] text; the time ids above for both halves.
    assert torch.equal(first["sample"], torch.cat([ref["ddim_init_latents"]] * 2))
    assert int(first["t"]) == 901
    assert torch.equal(first["ehs"], unet_ehs)
    assert torch.equal(first["added"]["text_embeds"], ref["unet_text_embeds"])
    assert torch.equal(first["added"]["time_ids"], ref["unet_time_ids"])
    ref["pipeline_image"] = pipe(**call, latents=ref["ddim_init_latents"].clone(), output_type="pt").images
    vae = pipe.vae
    sf = vae.config.scaling_factor
    assert sf == SCALING_FACTOR and vae.config.force_upcast
    img = (vae.decode(ref["ddim_latents"] / sf).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(img, ref["pipeline_image"], atol=1e-6)
    saturated = ((ref["pipeline_image"] == 0) | (ref["pipeline_image"] == 1)).float().mean().item()
    assert saturated < 0.5, f"pipeline_image is mostly clamped ({saturated:.0%})"
    log(f"  pipeline_image: {saturated:.1%} of pixels clamped to 0 or 1")

    # ---- VAE
    ref["vae_decode_in"] = torch.randn([1, 4, 16, 16], generator=gen)
    ref["vae_decode_out"] = vae.decode(ref["vae_decode_in"]).sample

    ref = {k: v.detach().contiguous() for k, v in ref.items()}
    for k, v in ref.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        assert torch.isfinite(v.float()).all(), k
    for k in ("unet_out", "unet_mid", "unet_time_emb", "unet_aug_emb", "unet_emb", "ddim_latents", "pipeline_image",
              "vae_decode_out"):
        check_sane(k, ref[k])
        log(f"  {k:30s} {stats(ref[k])}")
    return ref, eos_positions


TENSOR_DESCRIPTIONS = {
    "ids_1": "tokenizer(prompt, padding='max_length', max_length=77, truncation=True).input_ids, [1, 77]: bos 1512, "
    "the text, eos 1513, then tokenizer's pad token <|endoftext|> (1513) to 77",
    "ids_2": "the same with tokenizer_2, which pads with '!' = id 0",
    "neg_ids_1": "ids_1 of the negative prompt 'a cat'",
    "neg_ids_2": "ids_2 of the negative prompt 'a cat'",
    "empty_ids_1": "ids_1 of '' (bos, eos, then eos)",
    "empty_ids_2": "ids_2 of '' (bos, eos, then 0)",
    "prompt_embeds": "pipe.encode_prompt(prompt, device='cpu', num_images_per_prompt=1, "
    f"do_classifier_free_guidance=True, negative_prompt=None)[0], [1, 77, {W1 + W2}] = cat(text_encoder(ids_1, "
    "output_hidden_states=True).hidden_states[-2], text_encoder_2(ids_2, output_hidden_states=True)"
    ".hidden_states[-2], dim=-1): each encoder's output after its penultimate layer (text_encoder: after layer "
    f"{L1 - 2} of 0..{L1 - 1}; text_encoder_2: after layer {L2 - 2} of 0..{L2 - 1}), without the final layer norm; "
    f"[..., :{W1}] from text_encoder, [..., {W1}:] from text_encoder_2",
    "negative_prompt_embeds": f"encode_prompt(...)[1] with negative_prompt=None: zeros [1, 77, {W1 + W2}] "
    "(force_zeros_for_empty_prompt)",
    "pooled_prompt_embeds": f"encode_prompt(...)[2], [1, {P2}]: text_encoder_2's text_embeds = text_projection "
    f"(Linear {W2}->{P2}, no bias) of its last hidden state (all {L2} layers, then final_layer_norm) at the first "
    "eos of ids_2 (transformers takes argmax(input_ids) since the config's eos_token_id is 2; eos 1513 is the "
    "highest id, so that is the first eos). text_encoder's pooled output is not used",
    "negative_pooled_prompt_embeds": f"encode_prompt(...)[3] with negative_prompt=None: zeros [1, {P2}]",
    "neg_prompt_embeds": "encode_prompt(prompt, ..., negative_prompt='a cat')[1]: as prompt_embeds, from neg_ids_1 "
    "and neg_ids_2 (negative_prompt_2 defaults to negative_prompt)",
    "neg_pooled_prompt_embeds": "encode_prompt(prompt, ..., negative_prompt='a cat')[3]: as pooled_prompt_embeds, "
    "from neg_ids_2",
    "empty_pooled_prompt_embeds": "encode_prompt(prompt, ..., negative_prompt='')[3], from empty_ids_2: an explicit "
    "'' is encoded like any text, NOT zeroed (diffusers zeroes the negative only when negative_prompt is None and "
    "force_zeros_for_empty_prompt)",
    "add_time_ids": f"pipe._get_add_time_ids(original_size=({HEIGHT}, {WIDTH}), crops_coords_top_left=(0, 0), "
    f"target_size=({HEIGHT}, {WIDTH}), dtype=float32, text_encoder_projection_dim={P2}), [1, 6] = [orig_h, orig_w, "
    f"crop_top, crop_left, target_h, target_w]: what __call__ builds for height=width={HEIGHT} (the negative half "
    "gets the same)",
    "add_time_ids_custom": f"the same with original_size={CUSTOM_ORIGINAL_SIZE}, crops_coords_top_left="
    f"{CUSTOM_CROPS}, target_size=({HEIGHT}, {WIDTH}): "
    f"{[*CUSTOM_ORIGINAL_SIZE, *CUSTOM_CROPS, HEIGHT, WIDTH]}",
    "unet_sample": "seeded latent input of the UNet call, [2, 4, 16, 16]",
    "unet_text_embeds": f"cat([negative_pooled_prompt_embeds, pooled_prompt_embeds]), [2, {P2}]: added_cond_kwargs' "
    "text_embeds (the uncond row is zeros)",
    "unet_time_ids": "add_time_ids repeated for the batch, [2, 6]: added_cond_kwargs' time_ids",
    "unet_out": f"unet(unet_sample, {UNET_TIMESTEP}, encoder_hidden_states=cat([negative_prompt_embeds, "
    "prompt_embeds]) (batch [uncond, cond]; the uncond half is zeros), added_cond_kwargs={'text_embeds': "
    "unet_text_embeds, 'time_ids': unet_time_ids}).sample, [2, 4, 16, 16]",
    "unet_mid": "the output of unet.mid_block in that call, [2, 24, 4, 4] (SDXL's h)",
    "unet_time_emb": f"unet.time_embedding(unet.time_proj({UNET_TIMESTEP})) in that call, [2, {TE}] (the timestep "
    f"broadcast to the batch; time_proj: {UNET['block_out_channels'][0]} sinusoidal channels, flip_sin_to_cos "
    f"(cos first), freq_shift 0; time_embedding: Linear {UNET['block_out_channels'][0]}->{TE}, SiLU, Linear "
    f"{TE}->{TE})",
    "unet_add_embeds": f"the input of unet.add_embedding in that call, [2, {ADD_IN}] = cat([unet_text_embeds, "
    f"add_time_proj(unet_time_ids.flatten()).reshape(2, {6 * TD})], dim=-1); add_time_proj is Timesteps({TD}, "
    f"flip_sin_to_cos=True, freq_shift=0) applied to each of the six numbers, their {TD}-wide embeddings "
    "concatenated in order",
    "unet_aug_emb": f"unet.add_embedding(unet_add_embeds) (Linear {ADD_IN}->{TE}, SiLU, Linear {TE}->{TE}), "
    f"[2, {TE}]",
    "unet_emb": f"unet_time_emb + unet_aug_emb, [2, {TE}]: the temb every resnet gets (captured as "
    "down_blocks[0]'s temb argument); no time_embed_act",
    "ddim_init_latents": "seeded initial latents [1, 4, 16, 16]; the pipeline multiplies them by "
    "scheduler.init_noise_sigma = 1 (DDIM)",
    "ddim_timesteps": f"the pipeline's timesteps (scheduler.set_timesteps({STEPS}): 'leading' spacing + steps_offset "
    "1): 901, 801, ..., 1",
    "ddim_latents": f"pipe(prompt, num_inference_steps={STEPS}, guidance_scale={GUIDANCE_SCALE}, height={HEIGHT}, "
    f"width={WIDTH}, latents=ddim_init_latents, output_type='latent').images, [1, 4, 16, 16]: negative_prompt None "
    "(zero negative embeddings), eta 0, guidance_rescale 0, no denoising_end. Each step: x = cat([latents] * 2) "
    "(DDIM's scale_model_input is the identity); eps = unet(x, t, encoder_hidden_states=cat([negative_prompt_embeds, "
    "prompt_embeds]), text_embeds=unet_text_embeds, time_ids=unet_time_ids); eps = eps_u + "
    f"{GUIDANCE_SCALE} * (eps_c - eps_u); latents = DDIM step (epsilon, eta 0, no clipping; set_alpha_to_one false: "
    "after the last step (t=1) the previous alpha is alphas_cumprod[0])",
    "pipeline_image": f"the same call with output_type='pt', [1, 3, {HEIGHT}, {WIDTH}] = "
    f"(vae.decode(ddim_latents / {SCALING_FACTOR}).sample / 2 + 0.5).clamp(0, 1) (the VAE runs in float32, so "
    "force_upcast changes nothing; no watermark)",
    "vae_decode_in": "seeded latent [1, 4, 16, 16]",
    "vae_decode_out": f"vae.decode(vae_decode_in).sample, [1, 3, {HEIGHT}, {WIDTH}], raw: no scaling_factor applied, "
    "no clamping (the pipeline decodes latents / scaling_factor)",
}


def write(pipe, ref, eos_positions):
    import diffusers
    import transformers

    assert set(TENSOR_DESCRIPTIONS) == set(ref), set(TENSOR_DESCRIPTIONS) ^ set(ref)
    unet_cfg = pipe.unet.config
    heads = list(unet_cfg.attention_head_dim)
    widths = list(unet_cfg.block_out_channels)
    te_keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
               "projection_dim", "bos_token_id", "eos_token_id", "pad_token_id", "layer_norm_eps")
    meta = {
        "description": "Reference outputs of this tiny StableDiffusionXLPipeline, computed with diffusers/transformers "
        "in float32 on CPU from the pipeline re-loaded from this folder (float16 weights upcast). See "
        "scripts/make_sdxl_fixture.py; every tensor is described under tensor_descriptions.",
        "prompt": PROMPT,
        "negative_prompt": None,
        "negative_prompt_nonempty": NEGATIVE,
        "height": HEIGHT,
        "width": WIDTH,
        "vae_scale_factor": pipe.vae_scale_factor,
        "guidance_scale": GUIDANCE_SCALE,
        "guidance_rescale": 0.0,
        "denoising_end": None,
        "num_inference_steps": STEPS,
        "eta": 0.0,
        "init_noise_sigma": float(pipe.scheduler.init_noise_sigma),
        "unet_timestep": UNET_TIMESTEP,
        "scaling_factor": pipe.vae.config.scaling_factor,
        "force_upcast": pipe.vae.config.force_upcast,
        "force_zeros_for_empty_prompt": pipe.config.force_zeros_for_empty_prompt,
        "prediction_type": pipe.scheduler.config.prediction_type,
        "add_time_ids": ref["add_time_ids"][0].tolist(),
        "add_time_ids_custom": {
            "original_size": list(CUSTOM_ORIGINAL_SIZE),
            "crops_coords_top_left": list(CUSTOM_CROPS),
            "target_size": [HEIGHT, WIDTH],
            "values": ref["add_time_ids_custom"][0].tolist(),
        },
        "add_time_ids_order": "original_size (h, w) + crops_coords_top_left (top, left) + target_size (h, w)",
        "token_ids": {k: ref[k][0].tolist() for k in ref if "ids_" in k and "time" not in k},
        "first_eos_position": eos_positions,
        "tokenizer": {"pad_token": pipe.tokenizer.pad_token, "pad_token_id": pipe.tokenizer.pad_token_id,
                      "bos_token_id": pipe.tokenizer.bos_token_id, "eos_token_id": pipe.tokenizer.eos_token_id,
                      "vocab_size": len(pipe.tokenizer)},
        "tokenizer_2": {"pad_token": pipe.tokenizer_2.pad_token, "pad_token_id": pipe.tokenizer_2.pad_token_id,
                        "bos_token_id": pipe.tokenizer_2.bos_token_id, "eos_token_id": pipe.tokenizer_2.eos_token_id,
                        "vocab_size": len(pipe.tokenizer_2)},
        "text_encoder": {k: getattr(pipe.text_encoder.config, k) for k in te_keys},
        "text_encoder_2": {k: getattr(pipe.text_encoder_2.config, k) for k in te_keys},
        "unet": {
            "block_out_channels": widths,
            "attention_head_dim (= heads per block)": heads,
            "head_width_per_block": [w // h if "CrossAttn" in t else None
                                     for w, h, t in zip(widths, heads, unet_cfg.down_block_types)],
            "transformer_layers_per_block": list(unet_cfg.transformer_layers_per_block),
            "mid_block_transformer_layers": unet_cfg.transformer_layers_per_block[-1],
            "up_blocks_transformer_layers": [len(b.attentions[0].transformer_blocks) if hasattr(b, "attentions")
                                             else None for b in pipe.unet.up_blocks],
            "cross_attention_dim": unet_cfg.cross_attention_dim,
            "addition_embed_type": unet_cfg.addition_embed_type,
            "addition_time_embed_dim": unet_cfg.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": unet_cfg.projection_class_embeddings_input_dim,
            "time_embed_dim": pipe.unet.time_embedding.linear_2.out_features,
        },
        "stored_float16": list(FLOAT16_COMPONENTS),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "tensor_descriptions": TENSOR_DESCRIPTIONS,
    }
    write_references(FOLDER, ref, meta, MAX_BYTES)


def main():
    import diffusers
    import transformers

    torch.set_num_threads(1)
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    log(f"building {FOLDER.name}")
    pipe = build()
    originals = save(pipe)
    del pipe
    pipe = load()
    for name in MODELS:
        assert_same_weights(f"sdxl reloaded {name}", originals[name], getattr(pipe, name))
        assert all(p.dtype == torch.float32 for p in getattr(pipe, name).parameters()), name
    ref, eos_positions = references(pipe)
    write(pipe, ref, eos_positions)


if __name__ == "__main__":
    sys.exit(main())
