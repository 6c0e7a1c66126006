#!/usr/bin/env python3
"""Build the small, committed test fixtures that the Rust loaders are checked against.

How to run (from the repository root; CPU only, about 30 s on 2 cores, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_fixtures.py

It is deterministic (fixed seeds, float32 on CPU) and rewrites, from scratch:

* tests/fixtures/clip_tokenizer_cases.json
    CLIP's full 49408-token vocabulary, built from assets/clip/bpe_simple_vocab_16e6.txt.gz (open_clip's BPE
    file, MIT, see assets/clip/LICENSE), loaded into transformers' CLIPTokenizer; 27 varied prompts with their
    ids padded to 77 (what Stable Diffusion pipelines feed the text encoder).

* tests/fixtures/word-tokenizer/
    WordLevel tokenizer.json files that name their own special tokens (`[BOS]`, `[EOS]`, `[PAD]`, not CLIP's),
    written by the `tokenizers` library, in four folders that declare them in the ways transformers reads:
      - template/: TemplateProcessing `[BOS] $A [EOS]`, padding and truncation sections (length 8), nothing else;
      - config/: the same tokenizer.json with a tokenizer_config.json naming other tokens (`<s>`, `</s>`,
        `<pad>`, model_max_length 6): transformers still puts the template's tokens around the text, but pads with
        the config's pad token and matches the config's tokens whole in the text;
      - roberta/: RobertaProcessing (cls `[BOS]`, sep `[EOS]`), truncation 8, pad token from special_tokens_map.json;
      - bert/: BertProcessing, pad token and model_max_length 7 from tokenizer_config.json.
    cases.json holds, per folder, the ids of transformers' PreTrainedTokenizerFast loaded from it, called as
    StableDiffusionPipeline calls its tokenizer (padding="max_length", truncation=True) with max_length the
    config's model_max_length or, without one, tokenizer.json's truncation length (transformers then leaves
    model_max_length unset, 1e30); `ids` is null where transformers raises (a word outside the vocabulary).

* tests/fixtures/tiny-sd1/ and tests/fixtures/tiny-sd2/
    Tiny random Stable Diffusion pipelines in diffusers layout (model_index.json, unet/, vae/, text_encoder/,
    tokenizer/, scheduler/; no safety checker or feature extractor), SD 1.x and SD 2.x flavoured:
      - UNet2DConditionModel: 3 levels (CrossAttnDown, CrossAttnDown, Down / Up, CrossAttnUp, CrossAttnUp),
        block_out_channels (8, 16, 16), 2 layers per block, cross_attention_dim 32, norm_num_groups 8,
        sample_size 16 (channels kept this small so each fixture folder stays near 1.5 MB).
        SD1: attention_head_dim 2 (= 2 heads), conv proj_in/proj_out.
        SD2: attention_head_dim (2, 4, 4) (= heads per block), linear proj_in/proj_out, upcast_attention.
      - CLIPTextModel: width 32, 2 layers, 4 heads, MLP 64, 77 positions; quick_gelu (SD1) / gelu (SD2).
      - tokenizer: CLIP's vocabulary reduced to the first 1000 merges (1514 tokens; bos 1512, eos 1513),
        vocab.json + merges.txt, model_max_length 77; pad "<|endoftext|>" (SD1) / "!" = id 0 (SD2).
      - AutoencoderKL: block_out_channels (8, 16), 1 layer per block, 4 latent channels (a 16x16 latent
        decodes to 32x32).
      - DDIMScheduler with SD's settings; prediction_type epsilon (SD1) / v_prediction (SD2).
    Weights are random, then perturbed with a seeded generator (norm weights and biases made non-trivial) and
    rounded to values exactly representable in float16, so every copy holds exactly the same values whatever
    its stored dtype. Stored dtypes (see FLOAT16_COMPONENTS): tiny-sd1 has a float16 unet and float32 vae and
    text_encoder, tiny-sd2 is all float16; a loader must upcast to float32. text_encoder/model.safetensors uses
    the `text_model.`-prefixed key names that real SD repositories ship (transformers >= 5.6 saves them without
    it). The tokenizer folder has vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json like
    the SD hub repositories, and no tokenizer.json.
    Each folder also holds:
      - reference.safetensors + reference.json: reference outputs computed with diffusers/transformers in float32
        on CPU from the pipeline re-loaded from the folder (tokenizer ids, text embeddings, one UNet call with its
        mid-block output, VAE decode/encode, DDIM timesteps and one step, a whole 10-step CFG pipeline run).
        reference.json lists every tensor with its shape and dtype.
      - ldm.safetensors: the same UNet, VAE and text encoder weights in the original single-file (LDM/CompVis)
        layout, stored as float16 like most published single-file checkpoints. SD1 uses the CLIP layout
        (cond_stage_model.transformer.text_model...); SD2 the OpenCLIP layout (cond_stage_model.model...,
        fused attn.in_proj_weight) with, as in real SD 2.x checkpoints, one more (unused, random) resblock than the
        diffusers text encoder has, plus text_projection and logit_scale. The conversion is written here from
        the two layouts' definitions and validated by loading the file back with diffusers' own single-file
        loader (StableDiffusionPipeline.from_single_file, offline, config = the folder) and checking every weight
        is bit-identical, plus a control: doubling a few tensors in a copy must change exactly the weights they
        map to.
"""

import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BPE_PATH = ROOT / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
FIXTURES = ROOT / "tests" / "fixtures"

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LEN = 77
FULL_VOCAB_MERGES = 49152 - 256 - 2  # 48894 merges -> 49408 tokens
TINY_VOCAB_MERGES = 1000  # -> 1514 tokens


def log(*args):
    print("[make_fixtures]", *args, flush=True)


def write_references(folder, ref, meta, max_bytes):
    """Writes reference.safetensors (the tensors `ref`) and reference.json (`meta`, with every tensor's shape and
    dtype under "tensors"), then checks that the whole fixture folder stays under `max_bytes`."""
    from safetensors.torch import save_file

    save_file(ref, str(folder / "reference.safetensors"), metadata={"format": "pt"})
    meta = {**meta, "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in ref.items()}}
    with open(folder / "reference.json", "w") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    log(f"done; {folder.relative_to(ROOT)} holds {total / 1e3:.0f} kB: {sorted(p.name for p in folder.iterdir())}")
    assert total < max_bytes, f"{folder.name} must stay under {max_bytes / 1e6:g} MB"


# ----------------------------------------------------------------------------------------------------------------
# CLIP vocabulary
# ----------------------------------------------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2 / CLIP byte -> printable unicode character table (order matters: it fixes the first 256 ids)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, [chr(c) for c in chars]))


def clip_vocab(n_merges):
    """CLIP's vocabulary as built by its SimpleTokenizer: bytes, bytes+</w>, one token per merge, bos, eos."""
    lines = gzip.open(BPE_PATH).read().decode("utf-8").split("\n")
    assert lines[0].startswith('"bpe_simple_vocab_16e6.txt#version'), lines[0]
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    assert len(merges) == n_merges and all(len(m) == 2 for m in merges)
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    assert len(tokens) == len(set(tokens)) == 512 + n_merges + 2
    return tokens, merges


def write_vocab_files(folder, n_merges):
    tokens, merges = clip_vocab(n_merges)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return len(tokens)


def write_tokenizer_configs(folder, pad_token):
    """tokenizer_config.json + special_tokens_map.json in the style of the SD 1.x / 2.x hub repositories."""
    folder = Path(folder)
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LEN,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **special,
    }
    with open(folder / "tokenizer_config.json", "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(folder / "special_tokens_map.json", "w") as f:
        json.dump(special, f, indent=2)
        f.write("\n")


def load_tokenizer(folder, pad_token=EOS):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_LEN, pad_token=pad_token)


def encode(tok, text):
    """Exactly how StableDiffusionPipeline.encode_prompt tokenizes."""
    return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids


TOKENIZER_CASES = [
    "a photo of a cat",
    "A Photo of a CAT",
    "a photo of a dog, in the style of Van Gogh!",
    "Hello, world... what?!",
    "the 1990s",
    "pi is 3.14",
    "it's a dog",
    "don't stop",
    "we're here, they've gone, I'm fine, you'll see, he'd go",
    "don\u2019t (typographic apostrophe)",
    "  leading and trailing spaces  ",
    "multiple    spaces   between   words",
    "line one\nline two\tand a tab\r\n",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",
    "\u00fcber Stra\u00dfe",
    "e\u0301cole (decomposed accent)",
    "\u00c9COLE NA\u00cfVE",
    "\u65e5\u672c\u306e\u732b",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "a dog \U0001f436 and a cat \U0001f431",
    "user@example.com #hashtag $100 50% (parens) [brackets] {braces}",
    "a-b_c/d\\e",
    "highly detailed, 8k, trending on artstation, 4k uhd",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "!",
    "",
    " ".join(["a very long prompt about a small brown dog sitting on a red sofa"] * 8),
]


def make_tokenizer_cases(out_path):
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        n = write_vocab_files(tmp, FULL_VOCAB_MERGES)
        assert n == 49408, n
        tok = load_tokenizer(tmp)
    check = tok("a photo of a cat").input_ids
    assert check == [49406, 320, 1125, 539, 320, 2368, 49407], check
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    cases = []
    for text in TOKENIZER_CASES:
        ids = encode(tok, text)
        assert len(ids) == MAX_LEN and ids[0] == 49406
        n_tokens = len(tok(text).input_ids)
        cases.append({"text": text, "n_tokens_unpadded": n_tokens, "ids": ids})
    long_case = cases[-1]
    assert long_case["n_tokens_unpadded"] > MAX_LEN and long_case["ids"][-1] == 49407
    doc = {
        "description": "CLIP tokenizer reference: full 49408-token vocabulary built from "
        "assets/clip/bpe_simple_vocab_16e6.txt.gz, encoded with transformers' CLIPTokenizer exactly as "
        "StableDiffusionPipeline does (padding='max_length', max_length=77, truncation=True). "
        "n_tokens_unpadded is the length with bos/eos before truncation and padding.",
        "tokenizer_class": f"{type(tok).__module__}.{type(tok).__name__} "
        f"(transformers {transformers.__version__}; backend: Rust `tokenizers`, i.e. the 'fast' tokenizer; "
        "transformers 5 has a single CLIP tokenizer class, CLIPTokenizerFast is an alias of it)",
        "vocab_size": n,
        "model_max_length": MAX_LEN,
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "pad_token": tok.pad_token,
        "cases": cases,
    }
    # One case per line keeps the file short and diffable.
    header = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=False, indent=1)
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(header[:-2] + ',\n "cases": [\n' + body + "\n ]\n}\n")
    assert json.load(open(out_path, encoding="utf-8")) == doc
    log(f"wrote {out_path.relative_to(ROOT)} ({len(cases)} cases)")


# ----------------------------------------------------------------------------------------------------------------
# Word-level tokenizers that name their own special tokens
# ----------------------------------------------------------------------------------------------------------------

WORD_SPECIALS = ["[PAD]", "[BOS]", "[EOS]"]
# `<s>`, `</s>` and `<pad>` are what config/'s tokenizer_config.json names instead; as vocabulary entries the
# Whitespace pre-tokenizer can never produce, they are reached only by being matched whole as special tokens.
WORD_VOCAB = WORD_SPECIALS + ["a", "an", "ankle", "boot", "of", "photo", "red", "sneaker", "<s>", "</s>", "<pad>"]
WORD_LENGTH = 8
WORD_PROMPTS = [
    "a photo of a sneaker",
    "A PHOTO of an Ankle  Boot",
    "",
    "a [EOS] red sneaker",
    " ".join(["a red sneaker"] * 4),
    "a photo of a cat",
]


def word_tokenizer(post_processor, padding, truncation):
    """A lowercasing, whitespace-splitting WordLevel tokenizer as the `tokenizers` library builds and saves it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(WORD_VOCAB)}
    # The unknown token is left out of the vocabulary, so an unknown word is an error (as in dma) not an id.
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(WORD_SPECIALS)
    tok.post_processor = post_processor
    if padding:
        tok.enable_padding(length=WORD_LENGTH, pad_id=vocab["[PAD]"], pad_token="[PAD]")
    if truncation:
        tok.enable_truncation(WORD_LENGTH)
    return tok


def make_word_tokenizer_cases(out):
    """tests/fixtures/word-tokenizer: the folders and cases.json described at the top of this file."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos, eos = ("[BOS]", 1), ("[EOS]", 2)
    template = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", pair="[BOS] $A [EOS] $B:1 [EOS]:1", special_tokens=[bos, eos]
    )
    # folder: (tokenizer, tokenizer_config.json, special_tokens_map.json, prompts beyond WORD_PROMPTS)
    folders = {
        "template": (word_tokenizer(template, padding=True, truncation=True), None, None, []),
        "config": (
            word_tokenizer(template, padding=True, truncation=True),
            {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
             "pad_token": "<pad>", "model_max_length": 6},
            None,
            ["a <pad> sneaker <s>"],
        ),
        "roberta": (
            word_tokenizer(processors.RobertaProcessing(eos, bos), padding=False, truncation=True),
            None,
            {"pad_token": "[PAD]"},
            [],
        ),
        "bert": (
            word_tokenizer(processors.BertProcessing(eos, bos), padding=False, truncation=False),
            {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "model_max_length": 7},
            None,
            [],
        ),
    }
    shutil.rmtree(out, ignore_errors=True)
    doc = {
        "description": "ids of transformers' PreTrainedTokenizerFast for each folder, called as "
        "StableDiffusionPipeline calls its tokenizer: padding='max_length', max_length as given, truncation=True; "
        "ids null where transformers raises. See scripts/make_fixtures.py.",
        "folders": {},
    }
    for name, (backend, config, special_map, extra) in folders.items():
        folder = out / name
        folder.mkdir(parents=True)
        backend.save(str(folder / "tokenizer.json"))
        for file, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
            if content is not None:
                with open(folder / file, "w") as f:
                    json.dump(content, f, indent=2)
                    f.write("\n")
        tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
        max_length = config["model_max_length"] if config else WORD_LENGTH
        assert tok.model_max_length == (max_length if config else int(1e30)), tok.model_max_length
        cases = []
        for text in WORD_PROMPTS + extra:
            try:
                ids = tok(text, padding="max_length", max_length=max_length, truncation=True).input_ids
            except Exception as e:  # `tokenizers` raises a bare Exception for an unknown word
                assert "Missing [UNK] token" in str(e), e
                ids = None
            if ids is not None and name == "template":
                # The file's own padding and truncation give the same ids through the `tokenizers` library alone.
                assert backend.encode(text).ids == ids, (text, backend.encode(text).ids, ids)
            cases.append({"text": text, "ids": ids})
        # Whatever the config names, the ids start and end with the post-processor's tokens.
        assert all(c["ids"] is None or (c["ids"][0], 2 in c["ids"]) == (1, True) for c in cases), cases
        doc["folders"][name] = {"max_length": max_length, "cases": cases}
    # One case per line keeps the file short and diffable.
    text = json.dumps(doc, indent=1)
    for folder in doc["folders"].values():
        for case in folder["cases"]:
            text = text.replace(json.dumps(case, indent=1).replace("\n", "\n    "), json.dumps(case), 1)
    assert json.loads(text) == doc
    with open(out / "cases.json", "w") as f:
        f.write(text + "\n")
    log(f"wrote {out.relative_to(ROOT)} ({len(folders)} folders)")


# ----------------------------------------------------------------------------------------------------------------
# Tiny pipelines
# ----------------------------------------------------------------------------------------------------------------

UNET_BLOCKS = (8, 16, 16)
VAE_BLOCKS = (8, 16)
# Which diffusers-folder components are stored as float16 (the rest float32), to keep the folders small while
# covering both dtypes. The single-file ldm.safetensors is always float16.
FLOAT16_COMPONENTS = {"sd1": ("unet",), "sd2": ("unet", "vae", "text_encoder")}


def perturb_(module, generator, scale=0.02):
    """Make every parameter non-trivial: norms get weight 1 + 0.1 n and bias 0.1 n, the rest + scale * n.
    Then round everything to float16-representable values (the LDM file is float16)."""
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                if isinstance(mod, norm_types):
                    p.copy_(1.0 + 0.1 * noise if name == "weight" else 0.1 * noise)
                else:
                    p.add_(scale * noise)
                p.copy_(p.half().float())


def tiny_vae(sample_size):
    """A random AutoencoderKL of VAE_BLOCKS widths, one layer per block, 4 latent channels (halving once)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        block_out_channels=VAE_BLOCKS,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=sample_size,
    )


def build_components(flavour):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd2 = flavour == "sd2"
    seed = 2024 if sd2 else 1234
    gen = torch.Generator().manual_seed(seed + 1)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_BLOCKS,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4, 4) if sd2 else 2,
        norm_num_groups=8,
        use_linear_projection=sd2,
        upcast_attention=sd2,
    )
    perturb_(unet, gen)

    vocab_size = 512 + TINY_VOCAB_MERGES + 2
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu" if sd2 else "quick_gelu",
        max_position_embeddings=MAX_LEN,
        projection_dim=32,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=0 if sd2 else vocab_size - 1,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config)
    perturb_(text_encoder, gen)

    torch.manual_seed(seed + 3)
    vae = tiny_vae(32)
    perturb_(vae, gen)

    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
        prediction_type="v_prediction" if sd2 else "epsilon",
        timestep_spacing="leading",
    )
    return unet, text_encoder, vae, scheduler


def save_pipeline(flavour, folder):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file

    unet, text_encoder, vae, scheduler = build_components(flavour)
    pad = "!" if flavour == "sd2" else EOS
    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_files(tmp, TINY_VOCAB_MERGES)
        tokenizer = load_tokenizer(tmp, pad_token=pad)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    originals = {
        "unet": {k: v.clone() for k, v in unet.state_dict().items()},
        "vae": {k: v.clone() for k, v in vae.state_dict().items()},
        "text_encoder": {k: v.clone() for k, v in text_encoder.state_dict().items()},
    }
    # Stored dtypes (values are float16-representable either way, so nothing changes numerically).
    for name in FLOAT16_COMPONENTS[flavour]:
        getattr(pipe, name).to(torch.float16)
    if folder.exists():
        shutil.rmtree(folder)
    pipe.save_pretrained(str(folder), safe_serialization=True)

    # Tokenizer: ship vocab.json + merges.txt like the SD hub repositories (transformers 5 writes only a
    # tokenizer.json, which real SD folders don't have).
    tok_dir = folder / "tokenizer"
    shutil.rmtree(tok_dir)
    n = write_vocab_files(tok_dir, TINY_VOCAB_MERGES)
    assert n == text_encoder.config.vocab_size
    write_tokenizer_configs(tok_dir, pad)

    # Text encoder: real SD repositories use `text_model.`-prefixed keys; transformers >= 5.6 saves the
    # flattened CLIPTextModel without the prefix. Rewrite with the prefix (transformers loads both).
    te_file = folder / "text_encoder" / "model.safetensors"
    te = load_file(str(te_file))
    te = {k if k.startswith("text_model.") else "text_model." + k: v.contiguous() for k, v in te.items()}
    save_file(te, str(te_file), metadata={"format": "pt"})

    return originals


def load_pipeline(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder),
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
        dtype=torch.float32,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def differing_weights(name, expected, model):
    """Keys whose values differ (the key sets and shapes must match)."""
    got = model.state_dict()
    exp = {k: v for k, v in expected.items() if not k.endswith("position_ids")}
    got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
    assert set(exp) == set(got), (name, sorted(set(exp) ^ set(got))[:10])
    for k, v in exp.items():
        assert got[k].shape == v.shape, (name, k, got[k].shape, v.shape)
        assert got[k].device.type == "cpu", (name, k, "not loaded")
    return {k for k, v in exp.items() if not torch.equal(got[k].float(), v.float())}


def assert_same_weights(name, expected, model):
    diff = differing_weights(name, expected, model)
    assert not diff, (name, sorted(diff)[:10])


def stats(t):
    t = t.float()
    return f"mean {t.mean():+.4f} std {t.std():.4f} min {t.min():+.3f} max {t.max():+.3f}"


def check_sane(name, t, min_std=1e-2):
    assert torch.isfinite(t).all(), f"{name} has non-finite values"
    assert t.float().std() > min_std, f"{name} is nearly constant: {stats(t)}"


@torch.no_grad()
def make_references(flavour, folder, pipe):
    import diffusers
    import transformers
    from safetensors.torch import save_file

    prompt, negative = "a photo of a dog", ""
    gen = torch.Generator().manual_seed(4321 if flavour == "sd2" else 8765)
    ref = {}

    tok, te = pipe.tokenizer, pipe.text_encoder
    cond_ids = torch.tensor([encode(tok, prompt)], dtype=torch.int64)
    uncond_ids = torch.tensor([encode(tok, negative)], dtype=torch.int64)
    ref["cond_ids"], ref["uncond_ids"] = cond_ids, uncond_ids
    ref["cond_embeddings"] = te(cond_ids)[0]
    ref["uncond_embeddings"] = te(uncond_ids)[0]
    # The pipeline's own prompt encoding must agree with the above.
    pe, ne = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
    assert torch.equal(pe, ref["cond_embeddings"]) and torch.equal(ne, ref["uncond_embeddings"])

    unet = pipe.unet
    ref["unet_sample"] = torch.randn([2, 4, 16, 16], generator=gen)
    ref["unet_encoder_hidden_states"] = torch.cat([ref["uncond_embeddings"], ref["cond_embeddings"]])
    unet_timestep = 500
    captured = {}
    hook = unet.mid_block.register_forward_hook(lambda m, i, o: captured.__setitem__("mid", o))
    ref["unet_out"] = unet(
        ref["unet_sample"], unet_timestep, encoder_hidden_states=ref["unet_encoder_hidden_states"]
    ).sample
    hook.remove()
    ref["unet_mid"] = captured["mid"]

    vae = pipe.vae
    ref["vae_decode_in"] = torch.randn([1, 4, 16, 16], generator=gen)
    ref["vae_decode_out"] = vae.decode(ref["vae_decode_in"]).sample
    ref["vae_encode_in"] = torch.rand([1, 3, 32, 32], generator=gen) * 2 - 1
    ref["vae_encode_mean"] = vae.encode(ref["vae_encode_in"]).latent_dist.mean

    sched = pipe.scheduler
    sched.set_timesteps(20)
    ref["ddim_timesteps_20"] = sched.timesteps.clone().to(torch.int64)
    sched.set_timesteps(10)
    ref["ddim_timesteps"] = sched.timesteps.clone().to(torch.int64)
    step_t = int(ref["ddim_timesteps"][3])
    ref["ddim_step_model_output"] = torch.randn([1, 4, 16, 16], generator=gen)
    ref["ddim_step_sample"] = torch.randn([1, 4, 16, 16], generator=gen)
    out = sched.step(ref["ddim_step_model_output"], step_t, ref["ddim_step_sample"], eta=0.0)
    ref["ddim_step_prev"] = out.prev_sample
    ref["ddim_step_pred_x0"] = out.pred_original_sample

    ref["pipeline_init_latents"] = torch.randn([1, 4, 16, 16], generator=gen)
    common = dict(
        prompt=prompt,
        negative_prompt=negative,
        num_inference_steps=10,
        guidance_scale=7.0,
        eta=0.0,
    )
    ref["pipeline_final_latents"] = pipe(
        **common, latents=ref["pipeline_init_latents"].clone(), output_type="latent"
    ).images
    ref["pipeline_image"] = pipe(**common, latents=ref["pipeline_init_latents"].clone(), output_type="pt").images
    # The image is the VAE decode of the final latents (/ scaling_factor), mapped from [-1, 1] to [0, 1].
    sf = vae.config.scaling_factor
    img = (vae.decode(ref["pipeline_final_latents"] / sf).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(img, ref["pipeline_image"], atol=1e-6)

    ref = {k: v.detach().contiguous() for k, v in ref.items()}
    for k, v in ref.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        if v.dtype == torch.float32:
            assert torch.isfinite(v).all(), k
    for k in ["cond_embeddings", "unet_out", "unet_mid", "vae_decode_out", "vae_encode_mean", "ddim_step_prev",
              "pipeline_final_latents", "pipeline_image"]:
        check_sane(k, ref[k])
        log(f"  {flavour} {k:24s} {stats(ref[k])}")
    assert not torch.equal(ref["cond_embeddings"], ref["uncond_embeddings"])
    # CFG must make a visible difference, otherwise a missing guidance term would go unnoticed.
    saturated = ((ref["pipeline_image"] == 0) | (ref["pipeline_image"] == 1)).float().mean().item()
    assert saturated < 0.5, f"pipeline_image is mostly clamped ({saturated:.0%})"
    log(f"  {flavour} pipeline_image: {saturated:.1%} of pixels clamped to 0 or 1")

    save_file(ref, str(folder / "reference.safetensors"), metadata={"format": "pt"})
    meta = {
        "description": "Reference outputs of this tiny pipeline, computed with diffusers/transformers in float32 on "
        "CPU (pipeline loaded from this folder). cond/uncond_ids: tokenizer(prompt, padding='max_length', "
        "max_length=77, truncation=True). *_embeddings: text_encoder(ids)[0] (last hidden state after the final "
        "layer norm). unet_out = unet(unet_sample, unet_timestep, encoder_hidden_states="
        "unet_encoder_hidden_states).sample, whose batch is [uncond, cond]; unet_mid is the output of unet.mid_block "
        "in that call. vae_decode_out = vae.decode(vae_decode_in).sample (no scaling applied); vae_encode_mean = "
        "vae.encode(vae_encode_in).latent_dist.mean (unscaled). ddim_timesteps(_20): scheduler.set_timesteps(10 / "
        "20).timesteps; the DDIM step is scheduler.step(ddim_step_model_output, ddim_step_timestep, "
        "ddim_step_sample, eta=0) after set_timesteps(10) -> prev_sample, pred_original_sample. "
        "pipeline_final_latents = pipe(prompt, negative_prompt, latents=pipeline_init_latents, "
        "num_inference_steps, guidance_scale, eta=0, output_type='latent'); pipeline_image is the same call with "
        "output_type='pt' (vae.decode(latents / scaling_factor) / 2 + 0.5, clamped to [0, 1]).",
        "flavour": flavour,
        "prompt": prompt,
        "negative_prompt": negative,
        "guidance_scale": 7.0,
        "num_inference_steps": 10,
        "eta": 0.0,
        "unet_timestep": unet_timestep,
        "ddim_step_timestep": step_t,
        "scaling_factor": sf,
        "prediction_type": sched.config.prediction_type,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in ref.items()},
    }
    with open(folder / "reference.json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    log(f"wrote {(folder / 'reference.safetensors').relative_to(ROOT)} ({len(ref)} tensors)")


# ----------------------------------------------------------------------------------------------------------------
# diffusers -> original LDM single-file layout (own mapping, from the two architectures' module names)
# ----------------------------------------------------------------------------------------------------------------

UNET_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET_RENAMES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTN_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _apply_prefix_map(sd, prefix_map, out_prefix):
    """prefix_map: list of (diffusers_prefix, ldm_prefix, inner_renames or None). Every key must match exactly one
    entry; the longest matching prefix wins. Returns {ldm_key: (diffusers_key, tensor)}."""
    out = {}
    for key, value in sd.items():
        matches = [entry for entry in prefix_map if key.startswith(entry[0])]
        assert matches, f"no LDM mapping for {key}"
        src, dst, renames = max(matches, key=lambda e: len(e[0]))
        rest = key[len(src) :]
        if renames is not None:
            head, _, tail = rest.rpartition(".")  # e.g. "to_out.0" + "weight"
            assert head in renames, f"unexpected parameter {key}"
            rest = renames[head] + "." + tail
        ldm_key = out_prefix + dst + rest
        assert ldm_key not in out, ldm_key
        out[ldm_key] = (key, value)
    return out


def unet_to_ldm(unet_sd, unet):
    cfg = unet.config
    n_levels, per_block = len(cfg.block_out_channels), cfg.layers_per_block
    pm = [
        ("time_embedding.linear_1.", "time_embed.0.", None),
        ("time_embedding.linear_2.", "time_embed.2.", None),
        ("conv_in.", "input_blocks.0.0.", None),
        ("conv_norm_out.", "out.0.", None),
        ("conv_out.", "out.2.", None),
        ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET_RENAMES),
        ("mid_block.attentions.0.", "middle_block.1.", None),
        ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET_RENAMES),
    ]
    # input_blocks: [conv_in], then per level `per_block` x (resnet[, transformer]), then a downsampler
    # (all levels but the last).
    i = 1
    for level, block in enumerate(unet.down_blocks):
        has_attn = hasattr(block, "attentions")
        for layer in range(per_block):
            pm.append((f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{i}.0.", UNET_RESNET_RENAMES))
            if has_attn:
                pm.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{i}.1.", None))
            i += 1
        if block.downsamplers is not None:
            pm.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{i}.0.op.", None))
            i += 1
    # output_blocks: per level `per_block + 1` x (resnet[, transformer]), the last of a level also carrying the
    # upsampler (after the transformer if any).
    j = 0
    for level, block in enumerate(unet.up_blocks):
        has_attn = hasattr(block, "attentions")
        for layer in range(per_block + 1):
            pm.append((f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{j}.0.", UNET_RESNET_RENAMES))
            if has_attn:
                pm.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{j}.1.", None))
            if layer == per_block and block.upsamplers is not None:
                pm.append((f"up_blocks.{level}.upsamplers.0.conv.", f"output_blocks.{j}.{2 if has_attn else 1}.conv.", None))
            j += 1
    assert i == 1 + n_levels * (per_block + 1) - 1 and j == n_levels * (per_block + 1)
    return _apply_prefix_map(unet_sd, pm, "model.diffusion_model.")


def vae_to_ldm(vae_sd, vae):
    n_levels = len(vae.config.block_out_channels)
    pm = [
        ("quant_conv.", "quant_conv.", None),
        ("post_quant_conv.", "post_quant_conv.", None),
    ]
    for part in ("encoder", "decoder"):
        pm += [
            (f"{part}.conv_in.", f"{part}.conv_in.", None),
            (f"{part}.conv_out.", f"{part}.conv_out.", None),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", None),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", VAE_RESNET_RENAMES),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", VAE_RESNET_RENAMES),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTN_RENAMES),
        ]
    for level, block in enumerate(vae.encoder.down_blocks):
        for layer in range(len(block.resnets)):
            pm.append((f"encoder.down_blocks.{level}.resnets.{layer}.", f"encoder.down.{level}.block.{layer}.", VAE_RESNET_RENAMES))
        if block.downsamplers is not None:
            pm.append((f"encoder.down_blocks.{level}.downsamplers.0.conv.", f"encoder.down.{level}.downsample.conv.", None))
    # The LDM decoder numbers its levels from the lowest resolution up, diffusers in execution order.
    for level, block in enumerate(vae.decoder.up_blocks):
        ldm_level = n_levels - 1 - level
        for layer in range(len(block.resnets)):
            pm.append((f"decoder.up_blocks.{level}.resnets.{layer}.", f"decoder.up.{ldm_level}.block.{layer}.", VAE_RESNET_RENAMES))
        if block.upsamplers is not None:
            pm.append((f"decoder.up_blocks.{level}.upsamplers.0.conv.", f"decoder.up.{ldm_level}.upsample.conv.", None))
    out = _apply_prefix_map(vae_sd, pm, "first_stage_model.")
    # The LDM VAE attention projections are 1x1 convolutions.
    for k, (src, v) in list(out.items()):
        if ".mid.attn_1." in k and k.endswith(".weight") and not k.endswith("norm.weight"):
            out[k] = (src, v.reshape(*v.shape, 1, 1))
    return out


def clip_to_ldm(te_sd):
    out = {}
    for k, v in te_sd.items():
        if k.endswith("position_ids"):
            continue
        name = k if k.startswith("text_model.") else "text_model." + k
        out["cond_stage_model.transformer." + name] = (k, v)
    return out


def open_clip_to_ldm(te_sd, n_layers, width, generator):
    """SD 2.x's OpenCLIP text tower. Real checkpoints hold the full OpenCLIP model: one more resblock than the
    diffusers text encoder (SD 2 conditions on the penultimate layer's output, then ln_final), text_projection and
    logit_scale. Those extras are random here and must be ignored by a loader."""
    sd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in te_sd.items()}
    P = "cond_stage_model.model."
    out = {
        P + "token_embedding.weight": ("embeddings.token_embedding.weight", sd["embeddings.token_embedding.weight"]),
        P + "positional_embedding": ("embeddings.position_embedding.weight", sd["embeddings.position_embedding.weight"]),
        P + "ln_final.weight": ("final_layer_norm.weight", sd["final_layer_norm.weight"]),
        P + "ln_final.bias": ("final_layer_norm.bias", sd["final_layer_norm.bias"]),
    }
    used = {src for src, _ in out.values()}
    for i in range(n_layers):
        d, o = f"encoder.layers.{i}.", f"{P}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [d + f"self_attn.{p}_proj.{kind}" for p in "qkv"]
            out[o + f"attn.in_proj_{kind}"] = ("+".join(qkv), torch.cat([sd[x] for x in qkv]))
            used.update(qkv)
            for src, dst in [
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ]:
                out[o + f"{dst}.{kind}"] = (d + f"{src}.{kind}", sd[d + f"{src}.{kind}"])
                used.add(d + f"{src}.{kind}")
    missing = set(k for k in sd if not k.endswith("position_ids")) - used
    assert not missing, missing
    # The unused extra block and heads.
    extra = {}
    o = f"{P}transformer.resblocks.{n_layers}."
    first = f"{P}transformer.resblocks.0."
    template = {k[len(first):]: v for k, v in out.items() if k.startswith(first)}
    for name, (_, v) in template.items():
        extra[o + name] = 0.02 * torch.randn(v.shape, generator=generator)
    extra[P + "text_projection"] = 0.02 * torch.randn([width, width], generator=generator)
    extra[P + "logit_scale"] = torch.tensor(4.6052)
    for k, v in extra.items():
        out[k] = (None, v.half().float())
    return out


def write_ldm(flavour, folder, pipe, originals):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(99)
    mapped = {}
    mapped.update(unet_to_ldm(originals["unet"], pipe.unet))
    mapped.update(vae_to_ldm(originals["vae"], pipe.vae))
    te_cfg = pipe.text_encoder.config
    if flavour == "sd2":
        mapped.update(open_clip_to_ldm(originals["text_encoder"], te_cfg.num_hidden_layers, te_cfg.hidden_size, gen))
    else:
        mapped.update(clip_to_ldm(originals["text_encoder"]))
    tensors = {k: v.to(torch.float16).contiguous() for k, (_, v) in mapped.items()}
    for k, (_, v) in mapped.items():
        assert torch.equal(tensors[k].float(), v.float()), f"{k} is not float16-representable"
    path = folder / "ldm.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    log(f"wrote {path.relative_to(ROOT)} ({len(tensors)} tensors, float16)")
    return path, {k: src for k, (src, _) in mapped.items()}


def load_single_file(path, folder):
    """diffusers' own single-file loader, offline, with the folder's configs."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(path),
        config=str(folder),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
        dtype=torch.float32,
    )
    return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}


# LDM keys altered in the negative control (one per sub-model, chosen where a mapping error would be likely:
# an upsampler after a transformer, the reversed VAE decoder levels, a VAE attention 1x1 conv, fused qkv).
TAMPER_KEYS = {
    "sd1": [
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "first_stage_model.decoder.up.0.block.1.conv1.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.k_proj.weight",
    ],
    "sd2": [
        "model.diffusion_model.input_blocks.4.1.proj_in.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
    ],
}


def validate_ldm(flavour, path, folder, originals, sources):
    """Load the single file back with diffusers' single-file loader and check every weight is bit-identical;
    then, as a control that the check is not vacuous, double a few tensors in a copy of the file and check that
    exactly the diffusers weights they map to come back different."""
    from safetensors.torch import load_file, save_file

    models = load_single_file(path, folder)
    for name, model in models.items():
        assert_same_weights(f"{flavour} ldm {name}", originals[name], model)
    del models

    tensors = load_file(str(path))
    expected = {"unet": set(), "vae": set(), "text_encoder": set()}
    for key in TAMPER_KEYS[flavour]:
        tensors[key] = tensors[key] * 2
        part = {"model": "unet", "first_stage_model": "vae", "cond_stage_model": "text_encoder"}[key.split(".")[0]]
        expected[part].update(k.removeprefix("text_model.") for k in sources[key].split("+"))
    with tempfile.TemporaryDirectory() as tmp:
        tampered = Path(tmp) / "ldm.safetensors"
        save_file(tensors, str(tampered), metadata={"format": "pt"})
        models = load_single_file(tampered, folder)
        for name, model in models.items():
            diff = differing_weights(f"{flavour} tampered ldm {name}", originals[name], model)
            assert diff == expected[name], (name, diff, expected[name])
    log(
        f"  {flavour}: ldm.safetensors validated with StableDiffusionPipeline.from_single_file: unet, vae and "
        "text_encoder bit-identical; tampering control passed"
    )


# ----------------------------------------------------------------------------------------------------------------


def main():
    import diffusers
    import transformers

    torch.set_num_threads(min(2, torch.get_num_threads()))
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    assert BPE_PATH.exists(), f"missing {BPE_PATH}"
    FIXTURES.mkdir(parents=True, exist_ok=True)
    make_tokenizer_cases(FIXTURES / "clip_tokenizer_cases.json")
    make_word_tokenizer_cases(FIXTURES / "word-tokenizer")
    for flavour in ("sd1", "sd2"):
        folder = FIXTURES / f"tiny-{flavour}"
        log(f"building {folder.relative_to(ROOT)}")
        originals = save_pipeline(flavour, folder)
        pipe = load_pipeline(folder)
        for name in ("unet", "vae", "text_encoder"):
            assert_same_weights(f"{flavour} reloaded {name}", originals[name], getattr(pipe, name))
        make_references(flavour, folder, pipe)
        path, sources = write_ldm(flavour, folder, pipe, originals)
        validate_ldm(flavour, path, folder, originals, sources)
    total = 0
    for p in sorted(FIXTURES.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
    log(f"done; tests/fixtures holds {total / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
