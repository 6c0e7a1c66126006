#!/usr/bin/env python3
"""A Textual Inversion embedding for tests/fixtures/tiny-sdxl, in the two layouts SDXL embeddings come in, and what
diffusers makes of it: tests/fixtures/adapters/ti-sdxl/.

How to run (from the repository root; CPU, one thread, seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_sdxl_ti_fixture.py

Why: an SDXL embedding holds one vector per text encoder (SDXL conditions on both), so it cannot use SD1's
{token: [1, D]} file (scripts/make_adapter_fixture.py, tests/fixtures/adapters/ti/). Embeddings are shared
(A1111, ComfyUI, CivitAI) as one file with the keys clip_l (first encoder, CLIP ViT-L) and clip_g (second, OpenCLIP
bigG); diffusers' examples/textual_inversion/textual_inversion_sdxl.py saves two diffusers-style files instead. A
loader must read both and put each vector into its own encoder; this fixture pins down what diffusers does with them.

It is deterministic (fixed seed, float32 on CPU) and writes:

- learned_embeds_sdxl.safetensors: the token <tiny-xl>, as SDXL embeddings are shared: {"clip_l": [1, 32],
  "clip_g": [1, 40]} float32 (text_encoder's width 32, text_encoder_2's width 40), safetensors metadata
  {"token": "<tiny-xl>", "format": "pt"}. Seeded random values of standard deviation 0.03, about that of the tiny
  encoders' token embeddings (0.028).
- pair/learned_embeds.safetensors, pair/learned_embeds_2.safetensors: the same two vectors as
  textual_inversion_sdxl.py saves them: {"<tiny-xl>": [1, 32]} (text_encoder) and {"<tiny-xl>": [1, 40]}
  (text_encoder_2).
- reference.safetensors + reference.json: from StableDiffusionXLPipeline.from_pretrained(tests/fixtures/tiny-sdxl)
  in float32 on CPU, with the embedding loaded as diffusers documents for SDXL:
      pipe.load_textual_inversion(state_dict["clip_l"], token="<tiny-xl>", text_encoder=pipe.text_encoder,
                                  tokenizer=pipe.tokenizer)
      pipe.load_textual_inversion(state_dict["clip_g"], token="<tiny-xl>", text_encoder=pipe.text_encoder_2,
                                  tokenizer=pipe.tokenizer_2)
  the token ids of "a photo of <tiny-xl>" for both tokenizers and encode_prompt's prompt_embeds and
  pooled_prompt_embeds for it, and the same for "a photo of" from the pipeline without the embedding.
  reference.json describes every tensor (tensor_descriptions; shapes and dtypes under tensors).
  The new token gets id 1514 in both tokenizers, above eos (1513): since the encoders' configs carry SDXL's
  eos_token_id 2, transformers pools at argmax(input_ids), i.e. at <tiny-xl>, not at the eos (as with real SDXL
  and its TI tokens 49408+); pooled_position in reference.json records it.
Checked here: loading pair/ instead (load_textual_inversion(pair, weight_name=..., text_encoder=..., tokenizer=...))
gives bit-identical ids and embeddings; each encoder's new token-embedding row is the vector loaded.
"""
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from make_fixtures import FIXTURES, log, write_references  # noqa: E402

BASE = FIXTURES / "tiny-sdxl"
OUT = FIXTURES / "adapters" / "ti-sdxl"
MAX_BYTES = 200e3
TOKEN = "<tiny-xl>"
PROMPT = "a photo of " + TOKEN
PLAIN_PROMPT = "a photo of"
SCALE = 0.03
SEED = 21
SHARED = OUT / "learned_embeds_sdxl.safetensors"
PAIR = OUT / "pair"
PAIR_FILES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")

TENSOR_DESCRIPTIONS = {
    "clip_l": "the embedding's first-encoder vector, [1, 32] (learned_embeds_sdxl.safetensors' clip_l)",
    "clip_g": "the embedding's second-encoder vector, [1, 40] (learned_embeds_sdxl.safetensors' clip_g)",
    "ids_1": "pipe.tokenizer(prompt, padding='max_length', max_length=77, truncation=True).input_ids after "
    "load_textual_inversion, [1, 77]: bos 1512, 'a photo of', <tiny-xl> = 1514 (the added token), eos 1513, then "
    "the pad token <|endoftext|> (1513)",
    "ids_2": "the same with pipe.tokenizer_2 (<tiny-xl> = 1514 there too), which pads with '!' = id 0",
    "prompt_embeds": "pipe.encode_prompt(prompt, device='cpu', num_images_per_prompt=1, "
    "do_classifier_free_guidance=False)[0] with the embedding loaded, [1, 77, 72] = cat(text_encoder(ids_1, "
    "output_hidden_states=True).hidden_states[-2], text_encoder_2(ids_2, ...).hidden_states[-2], dim=-1); "
    "<tiny-xl>'s input embedding is clip_l in text_encoder and clip_g in text_encoder_2",
    "pooled_prompt_embeds": "encode_prompt(...)[2] with the embedding loaded, [1, 56]: text_encoder_2's text_embeds, "
    "pooled at argmax(ids_2) = the position of <tiny-xl> (id 1514 > eos 1513; the config's eos_token_id is 2), "
    "see pooled_position",
    "plain_ids_1": "pipe.tokenizer(plain_prompt, ...).input_ids, [1, 77]",
    "plain_ids_2": "pipe.tokenizer_2(plain_prompt, ...).input_ids, [1, 77]",
    "plain_prompt_embeds": "encode_prompt(plain_prompt, ...)[0] (the same arguments) from the pipeline without the "
    "embedding, [1, 77, 72] (the pipeline with it gives the same)",
    "plain_pooled_prompt_embeds": "encode_prompt(plain_prompt, ...)[2] from the pipeline without the embedding, [1, 56] "
    "(pooled at the eos)",
}


def load():
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(BASE), local_files_only=True, dtype=torch.float32, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ids_of(tok, text):
    return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode(pipe, text):
    """(ids_1, ids_2, prompt_embeds, pooled_prompt_embeds) of `text`."""
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(text, device="cpu", num_images_per_prompt=1,
                                                         do_classifier_free_guidance=False)
    assert neg is None and neg_pooled is None
    return ids_of(pipe.tokenizer, text), ids_of(pipe.tokenizer_2, text), embeds, pooled


def check_loaded(pipe, vectors):
    """The token is in both tokenizers under the same new id, and each encoder's row for it is its vector."""
    token_ids = {}
    for name, (tok, te) in {"clip_l": (pipe.tokenizer, pipe.text_encoder),
                            "clip_g": (pipe.tokenizer_2, pipe.text_encoder_2)}.items():
        tid = tok.convert_tokens_to_ids(TOKEN)
        table = te.get_input_embeddings().weight
        assert tid == len(tok) - 1 == table.shape[0] - 1, (name, tid, len(tok), table.shape)
        assert torch.equal(table[tid], vectors[name][0]), name
        token_ids[name] = tid
    return token_ids


@torch.no_grad()
def pooled_position(pipe, ids_2, pooled):
    """Where text_encoder_2 pools: its text_embeds is text_projection of the last hidden state at argmax(ids_2)."""
    hidden = pipe.text_encoder_2(ids_2).last_hidden_state
    pos = int(ids_2[0].argmax())
    assert torch.equal(pipe.text_encoder_2.text_projection(hidden[:, pos]), pooled), "not pooled at argmax(ids)"
    return pos


def main():
    import diffusers
    import transformers

    torch.set_num_threads(1)
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    os.makedirs(PAIR, exist_ok=True)

    gen = torch.Generator().manual_seed(SEED)
    vectors = {
        "clip_l": torch.randn([1, 32], generator=gen) * SCALE,
        "clip_g": torch.randn([1, 40], generator=gen) * SCALE,
    }
    save_file(vectors, str(SHARED), metadata={"token": TOKEN, "format": "pt"})
    save_file({TOKEN: vectors["clip_l"]}, str(PAIR / PAIR_FILES[0]), metadata={"format": "pt"})
    save_file({TOKEN: vectors["clip_g"]}, str(PAIR / PAIR_FILES[1]), metadata={"format": "pt"})
    with safe_open(str(SHARED), "pt") as f:
        assert f.metadata() == {"token": TOKEN, "format": "pt"}, f.metadata()

    ref = {k: v.clone() for k, v in vectors.items()}

    # Without the embedding.
    pipe = load()
    assert pipe.text_encoder.config.hidden_size == 32 and pipe.text_encoder_2.config.hidden_size == 40
    assert TOKEN not in pipe.tokenizer.get_vocab() and TOKEN not in pipe.tokenizer_2.get_vocab()
    base_vocab = (len(pipe.tokenizer), len(pipe.tokenizer_2))
    ref["plain_ids_1"], ref["plain_ids_2"], ref["plain_prompt_embeds"], ref["plain_pooled_prompt_embeds"] = \
        encode(pipe, PLAIN_PROMPT)
    plain_pooled_position = pooled_position(pipe, ref["plain_ids_2"], ref["plain_pooled_prompt_embeds"])
    eos = pipe.tokenizer.eos_token_id
    assert plain_pooled_position == int((ref["plain_ids_2"][0] == eos).nonzero()[0])

    # The shared (clip_l / clip_g) file, loaded as diffusers' SDXL documentation does.
    state_dict = load_file(str(SHARED))
    pipe.load_textual_inversion(state_dict["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state_dict["clip_g"], token=TOKEN, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    token_ids = check_loaded(pipe, vectors)
    assert token_ids == {"clip_l": base_vocab[0], "clip_g": base_vocab[1]}, token_ids
    ref["ids_1"], ref["ids_2"], ref["prompt_embeds"], ref["pooled_prompt_embeds"] = encode(pipe, PROMPT)
    for k in ("ids_1", "ids_2"):
        assert (ref[k][0] == base_vocab[0]).sum() == 1, (k, ref[k])
    token_position = int((ref["ids_2"][0] == token_ids["clip_g"]).nonzero()[0])
    pos = pooled_position(pipe, ref["ids_2"], ref["pooled_prompt_embeds"])
    assert pos == token_position, (pos, token_position)
    # Loading leaves prompts without the token as they were.
    again = encode(pipe, PLAIN_PROMPT)
    for k, v in zip(("plain_ids_1", "plain_ids_2", "plain_prompt_embeds", "plain_pooled_prompt_embeds"), again):
        assert torch.equal(v, ref[k]), k
    del pipe

    # The pair of diffusers-style files gives bit-identical results.
    pipe = load()
    pipe.load_textual_inversion(str(PAIR), weight_name=PAIR_FILES[0], text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer, local_files_only=True)
    pipe.load_textual_inversion(str(PAIR), weight_name=PAIR_FILES[1], text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2, local_files_only=True)
    assert check_loaded(pipe, vectors) == token_ids
    for k, v in zip(("ids_1", "ids_2", "prompt_embeds", "pooled_prompt_embeds"), encode(pipe, PROMPT)):
        assert torch.equal(v, ref[k]), f"pair files: {k} differs"
    del pipe

    diff_embeds = (ref["prompt_embeds"] - ref["plain_prompt_embeds"]).abs().max().item()
    diff_pooled = (ref["pooled_prompt_embeds"] - ref["plain_pooled_prompt_embeds"]).abs().max().item()
    assert diff_embeds > 1e-2 and diff_pooled > 1e-2, (diff_embeds, diff_pooled)
    log(f"max |change| from the token: prompt_embeds {diff_embeds:.4g}, pooled_prompt_embeds {diff_pooled:.4g}")

    assert set(TENSOR_DESCRIPTIONS) == set(ref), set(TENSOR_DESCRIPTIONS) ^ set(ref)
    for k, v in ref.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    meta = {
        "description": __doc__.strip(),
        "base": "tests/fixtures/tiny-sdxl",
        "token": TOKEN,
        "prompt": PROMPT,
        "plain_prompt": PLAIN_PROMPT,
        "files": {
            "learned_embeds_sdxl.safetensors": {"clip_l": [1, 32], "clip_g": [1, 40],
                                                "metadata": {"token": TOKEN, "format": "pt"}},
            "pair/" + PAIR_FILES[0]: {TOKEN: [1, 32], "encoder": "text_encoder"},
            "pair/" + PAIR_FILES[1]: {TOKEN: [1, 40], "encoder": "text_encoder_2"},
        },
        "token_id": token_ids["clip_l"],
        "token_id_2": token_ids["clip_g"],
        "token_position": token_position,
        "pooled_position": pos,
        "plain_pooled_position": plain_pooled_position,
        "pooled_position_note": "transformers pools CLIPTextModel(WithProjection) at argmax(input_ids) when the "
        "config's eos_token_id is 2 (SDXL's configs): with the embedding loaded that is <tiny-xl> (id 1514, above "
        "eos 1513), not the eos",
        "embedding_std": SCALE,
        "seed": SEED,
        "max_abs_diff": {
            "prompt_embeds": diff_embeds,
            "pooled_prompt_embeds": diff_pooled,
            "note": "max |x - plain_x|: how much the token (and the words' shift) changes encode_prompt's outputs",
        },
        "pair_bit_identical": True,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        "tensor_descriptions": TENSOR_DESCRIPTIONS,
    }
    write_references(OUT, {k: v.contiguous() for k, v in ref.items()}, meta, MAX_BYTES)


if __name__ == "__main__":
    sys.exit(main())
