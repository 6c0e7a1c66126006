#!/usr/bin/env python3
"""Build tests/fixtures/tiny-blip-vqa (a tiny random transformers BlipForQuestionAnswering and its reference outputs)
and tests/fixtures/wordpiece-cases.json (BERT WordPiece tokenizer cases), which the Rust BLIP VQA model and BERT
tokenizer are checked against. Its tiny BERT vocabulary (tiny_bert_vocab) is shared with
scripts/make_image_reward_fixture.py.

How to run (from the repository root; CPU only, a few seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_blip_vqa_fixture.py

It is deterministic (fixed seeds, float32 on CPU) and rewrites, from scratch:

* tests/fixtures/wordpiece-cases.json
    A BERT-uncased-style vocab.txt of TINY_VOCAB_SIZE tokens (tiny_bert_vocab: special tokens at ids that are neither
    bert-base-uncased's nor the tokenizers library's defaults, [PAD] 0, [unused0] 1, [UNK] 2, [CLS] 3, [SEP] 4,
    [MASK] 5; ASCII punctuation, digits, a-z and ##a-##z, so any lowercase ASCII word can be tokenized; whole words
    and a few multi-letter ## pieces for which greedy longest-match matters; 4 CJK characters), with ~30 texts
    (case, punctuation, odd whitespace, accents, control characters, CJK, words outside the vocabulary, the
    100-character word limit, empty) encoded by transformers' slow, pure-Python BertTokenizerLegacy
    (do_lower_case=True; in transformers 5 `BertTokenizer` is the Rust `tokenizers` one, and BertTokenizerFast an
    alias of it), asserted identical to BertTokenizer's. `ids` include [CLS] ... [SEP]; `tokens` are
    convert_ids_to_tokens(ids), for reading.

* tests/fixtures/tiny-blip-vqa/  (laid out as the Hub's Salesforce/blip-vqa-base)
    - config.json + model.safetensors: BlipForQuestionAnswering.save_pretrained(safe_serialization=True), float32.
      Vision: 32x32 RGB images, 8x8 patches (16 + the class token), width 32, 2 layers, 4 heads, MLP 64.
      Text (encoder and decoder alike): the tiny vocabulary + [DEC] + [ENC], width 32, 2 layers, 2 heads (head dim
      16), MLP 48, 64 positions, cross-attention to width 32. The text width must equal the vision width (the
      decoder cross-attends to the question encoder's output with the same encoder_hidden_size as the encoder to
      the image's), but MLP widths, head counts and head dims all differ, so a swapped dimension shows.
      text_decoder.cls.predictions.decoder.weight is tied to text_decoder.bert.embeddings.word_embeddings.weight
      (and decoder.bias to text_decoder.cls.predictions.bias), and model.safetensors leaves both decoder.* copies
      out (checked: a loader must tie them itself). No position_ids buffers are stored; the text embeddings have no
      token_type_embeddings. Weights are drawn at the scale of trained ones (rescale_: std fan_in^-1/2) rather than
      transformers' 0.02, so that images, questions and answers visibly move the outputs.
      text_config.eos_token_id is transformers' default 2 (here [UNK]; blip-vqa-base has the same default, there an
      unused token): generation stops at sep_token_id, which BlipForQuestionAnswering.generate passes itself.
    - preprocessor_config.json (BlipImageProcessor: resize straight to 32x32, no crop, bicubic, OpenAI's CLIP
      mean/std, as blip-vqa-base has), vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json:
      the files the Hub's repository has (transformers 5's BlipProcessor.save_pretrained would write
      processor_config.json, tokenizer.json and tokenizer_config.json only). The tokenizer is built as
      transformers' BLIP conversion builds it: BertTokenizer(vocab.txt, do_lower_case=True), then bos_token [DEC]
      and additional special token [ENC], which take ids len(vocab) and len(vocab) + 1.
    - reference.safetensors + reference.json: outputs of the processor and model re-loaded from the folder (eval,
      float32, CPU): the processor's PIL backend (BlipImageProcessorPil) on two raw images in [0, 1] whose values
      are multiples of 1/255 (so PIL's 8-bit input is exact); the vision tower; each question's encoding; the
      decoder's logits for each candidate answer and BLIP's answer-ranking log-likelihoods; generate()'s ids.
      reference.json describes every tensor.

Weights are random, then perturbed (make_fixtures.perturb_: non-trivial layer norms) so no part is an identity.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from make_fixtures import FIXTURES, ROOT, check_sane, log, perturb_, stats, write_references

OUT = FIXTURES / "tiny-blip-vqa"
CASES = FIXTURES / "wordpiece-cases.json"

# ------------------------------------------------------------------------------------------------------------------
# A tiny BERT-uncased WordPiece vocabulary (shared with make_image_reward_fixture.py)
# ------------------------------------------------------------------------------------------------------------------

SPECIALS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["—", "…"]
DIGITS = list("0123456789")
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
WORDS = """
what color colour is the this that kind of shoe an photo picture image sneaker boot sandal heel red blue black white
green yellow brown pink gray grey orange purple running digit number one two three four five six seven eight nine zero
dog cat bird car it in on with and or for to at by from how many which where who why there are was do does don not no
yes high low ankle leather shirt dress bag coat pullover trouser man woman person people wearing hand written dark
light bright small big large tiny sitting standing sofa very long short left right top bottom side front back view
close up background sky grass water tree house street cafe naive over under near next his her their my your pair
single style sport casual formal open toe flat platform strap lace sole canvas suede made material drawing painting
sketch art render quality best detailed beautiful good bad old new worn
""".split()
# Pieces for which greedy longest-match matters: "sneakers" -> sneaker ##s, "sneaking" -> snea ##k ##ing,
# "runner" -> run ##ner, "runs" -> run ##s, "reddish" -> red ##dish.
PIECES = ["snea", "run", "##ker", "##ning", "##ner", "##ing", "##es", "##ed", "##er", "##ly", "##dish"]
CJK = ["红", "鞋", "猫", "狗"]  # red, shoe, cat, dog; 子 (in 鞋子) is left out on purpose


def tiny_bert_vocab():
    """The tokens of the tiny vocab.txt, in id order (id = line number)."""
    tokens = SPECIALS + PUNCTUATION + DIGITS + LETTERS + ["##" + c for c in LETTERS] + WORDS + PIECES + CJK
    assert len(set(tokens)) == len(tokens), sorted(t for t in tokens if tokens.count(t) > 1)
    return tokens


def write_vocab(path):
    tokens = tiny_bert_vocab()
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in tokens))
    return len(tokens)


TINY_VOCAB_SIZE = len(tiny_bert_vocab())


def blip_tokenizer(vocab_path):
    """BERT tokenizer as BLIP builds it (transformers' BLIP conversion, and BLIP's own init_tokenizer): lower case,
    bos [DEC], additional special token [ENC]; [DEC] and [ENC] get ids len(vocab) and len(vocab) + 1."""
    from transformers import BertTokenizer

    # (The path goes in positionally: transformers 5's BertTokenizer ignores a `vocab_file=` keyword.)
    tok = BertTokenizer(str(vocab_path), do_lower_case=True, model_max_length=512)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    n = TINY_VOCAB_SIZE
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [n, n + 1], tok.convert_tokens_to_ids(["[DEC]", "[ENC]"])
    assert tok.bos_token_id == n and len(tok) == n + 2
    return tok


# ------------------------------------------------------------------------------------------------------------------
# WordPiece cases
# ------------------------------------------------------------------------------------------------------------------

WORDPIECE_TEXTS = [
    "what color is the shoe",
    "WHAT COLOR IS THE SHOE?",
    "What Kind of Shoe is THIS?",
    "shoe? don't a-b (red),black.",
    "sneakers sneaking runner runs reddish",
    "a photo of a sneaker",
    "  leading,\ttabs\tand\nnewlines\r\nand   runs  of spaces  ",
    "Café naïve ÀNKLE Suède",
    "e\u0301 (a combining acute accent) and ﬁ (a ligature)",
    "seven 7 42 $5 5€ € ¿qué?",
    "xyzzy qwerty zzz",
    "a" * 100,
    "a" * 101,
    "ok " + "b" * 101 + " ok",
    "红鞋 猫狗 红鞋子",
    "a红b",
    "ねこ",
    "bell\x07 nul\x00 zero\u200bwidth soft\u00adhyphen bom\ufeff rep\ufffdlacement",
    "\u3000ideographic space\u00a0no-break\u2009thin",
    "em—dash … ellipsis ‘quotes’ «guillemets»",
    "[CLS] [SEP] [MASK] [UNK] [PAD]",
    "[cls] [Sep]",
    "#hash ##s ##",
    "don't stop",
    "A",
    "   ",
    "",
]


def make_wordpiece_cases():
    import transformers
    from transformers import BertTokenizer, BertTokenizerLegacy

    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = Path(tmp) / "vocab.txt"
        n = write_vocab(vocab_path)
        slow = BertTokenizerLegacy(str(vocab_path), do_lower_case=True)
        fast = BertTokenizer.from_pretrained(tmp, do_lower_case=True, local_files_only=True)
    assert len(slow) == len(fast) == n
    specials = {t: slow.convert_tokens_to_ids(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    assert specials == {t: fast.convert_tokens_to_ids(t) for t in specials}
    cases = []
    for text in WORDPIECE_TEXTS:
        ids = slow(text).input_ids
        assert ids == fast(text).input_ids, (text, ids, fast(text).input_ids)
        assert ids[0] == specials["[CLS]"] and ids[-1] == specials["[SEP]"]
        cases.append({"text": text, "ids": ids, "tokens": slow.convert_ids_to_tokens(ids)})
    by_text = {c["text"]: c["tokens"] for c in cases}
    # What the cases are there to cover, checked so a change of vocabulary cannot quietly lose it.
    assert by_text["sneakers sneaking runner runs reddish"][1:-1] == [
        "sneaker", "##s", "snea", "##k", "##ing", "run", "##ner", "run", "##s", "red", "##dish"
    ]
    assert by_text["a" * 100][1:-1] == ["a"] + ["##a"] * 99
    assert by_text["a" * 101][1:-1] == ["[UNK]"]
    assert "[UNK]" in by_text["seven 7 42 $5 5€ € ¿qué?"]
    assert by_text["红鞋 猫狗 红鞋子"][1:-1] == ["红", "鞋", "猫", "狗", "红", "鞋", "[UNK]"]
    doc = {
        "description": "BERT WordPiece tokenizer reference on the tiny BERT-uncased vocabulary (vocab, one token per "
        "line, id = line number) of scripts/make_blip_vqa_fixture.py (tiny_bert_vocab; tests/fixtures/tiny-blip-vqa/"
        "vocab.txt holds the same tokens). ids = tokenizer(text).input_ids, [CLS] ... [SEP] included, from "
        "transformers' slow BertTokenizerLegacy(vocab.txt, do_lower_case=True) (so accents are stripped too), "
        "asserted identical to the Rust-backed BertTokenizer's; tokens = convert_ids_to_tokens(ids). Special tokens "
        "spelled exactly ([CLS], [SEP], [MASK], [UNK], [PAD]) are matched whole in the text, before lower-casing, as "
        "transformers matches added tokens; '[cls]' is not. Words longer than max_input_chars_per_word characters "
        "(after normalisation) become [UNK], as does a word any of whose pieces is missing.",
        "tokenizer_class": f"transformers {transformers.__version__}: BertTokenizerLegacy == BertTokenizer",
        "vocab_size": n,
        "special_ids": specials,
        "max_input_chars_per_word": slow.wordpiece_tokenizer.max_input_chars_per_word,
        "vocab": tiny_bert_vocab(),
        "cases": cases,
    }
    header = json.dumps({k: v for k, v in doc.items() if k not in ("cases", "vocab")}, ensure_ascii=False, indent=1)
    vocab = json.dumps(doc["vocab"], ensure_ascii=False)
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    with open(CASES, "w", encoding="utf-8") as f:
        f.write(header[:-2] + ',\n "vocab": ' + vocab + ',\n "cases": [\n' + body + "\n ]\n}\n")
    assert json.load(open(CASES, encoding="utf-8")) == doc
    log(f"wrote {CASES.relative_to(ROOT)} ({len(cases)} cases, vocabulary of {n})")


# ------------------------------------------------------------------------------------------------------------------
# tiny-blip-vqa
# ------------------------------------------------------------------------------------------------------------------

QUESTIONS = ["What color is the shoe?", "what kind of shoe is this?"]
ANSWERS = [["red", "blue", "black", "white"], ["sneaker", "boot", "sandal", "running shoe"]]
IMAGE_SIZE = 32
RAW_SIZE = 48


def blip_config(tok):
    from transformers import BlipConfig

    text = dict(
        vocab_size=len(tok),
        # The decoder cross-attends to the question encoder's output with the same encoder_hidden_size as the
        # encoder cross-attends to the image: BlipForQuestionAnswering needs text width = vision width.
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
        sep_token_id=tok.sep_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    return BlipConfig(text_config=text, vision_config=vision)


def raw_images(generator):
    """Two RGB images [2, 3, 48, 48] in [0, 1] on the 8-bit grid: gradients with blocks, and smoothed noise."""
    n = RAW_SIZE
    y = torch.linspace(0, 1, n).view(n, 1).expand(n, n)
    x = torch.linspace(0, 1, n).view(1, n).expand(n, n)
    structured = torch.stack([x, y, 1 - 0.5 * (x + y)])
    structured[:, 8:20, 26:42] = torch.tensor([0.9, 0.1, 0.2]).view(3, 1, 1)
    structured[:, 30:44, 6:18] = torch.tensor([0.05, 0.2, 0.85]).view(3, 1, 1)
    structured[:, ::7, :] = 1.0  # thin lines: high frequencies the resize must filter
    coarse = torch.rand([1, 3, 8, 8], generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(n, n), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.15 * torch.randn([1, 3, n, n], generator=generator)).clamp(0, 1)
    images = torch.cat([structured.unsqueeze(0), noisy]).clamp(0, 1)
    return (images * 255).round() / 255


def to_pil(image):
    from PIL import Image

    array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array, mode="RGB")


def rescale_(model, generator):
    """Redraws linear, convolution and embedding weights with std fan_in^-1/2 (embeddings 0.5), the scale of trained
    weights, instead of the usual 0.02 (and transformers' BLIP vision's 1e-10): with those, each image and text moves
    the outputs by too little for a test to notice a mistake."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=generator) * fan_in**-0.5)
            elif isinstance(mod, torch.nn.Embedding):
                mod.weight.copy_(0.5 * torch.randn(mod.weight.shape, generator=generator))
            for name, p in mod.named_parameters(recurse=False):
                # nn.Parameter embeddings: BLIP vision's class_embedding and position_embedding (transformers),
                # cls_token and pos_embed (BLIP's own ViT, in make_image_reward_fixture.py).
                if "embed" in name or name == "cls_token":
                    p.copy_(0.5 * torch.randn(p.shape, generator=generator))


def save_blip(folder):
    """Saves the random model, image processor and tokenizer in the Hub's blip-vqa-base layout; returns the model's
    state dict."""
    from transformers import BlipForQuestionAnswering, BlipImageProcessorPil

    write_vocab(folder / "vocab.txt")
    tok = blip_tokenizer(folder / "vocab.txt")
    config = blip_config(tok)
    torch.manual_seed(41)
    model = BlipForQuestionAnswering(config).eval()
    rescale_(model, torch.Generator().manual_seed(43))
    perturb_(model, torch.Generator().manual_seed(42))
    decoder = model.text_decoder
    assert decoder.cls.predictions.decoder.weight is decoder.bert.embeddings.word_embeddings.weight, "not tied"
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(str(folder), safe_serialization=True)
    # BlipProcessor.save_pretrained in transformers 5 writes processor_config.json (the image processor's settings
    # nested in it) and no vocab.txt or special_tokens_map.json; the Hub's repositories have preprocessor_config.json,
    # vocab.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json, which these calls give.
    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    assert (folder / "vocab.txt").exists() and (folder / "tokenizer.json").exists()
    specials = {
        "additional_special_tokens": ["[ENC]"],
        "bos_token": "[DEC]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    }
    with open(folder / "special_tokens_map.json", "w") as f:  # as transformers 4 wrote it
        json.dump(specials, f, indent=2)
        f.write("\n")
    return original


def reload_blip(folder, original):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor

    model = BlipForQuestionAnswering.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    got = model.state_dict()
    assert set(got) == set(original), sorted(set(got) ^ set(original))[:10]
    for k, v in original.items():
        assert torch.equal(got[k], v), f"{k} changed on reload"
    stored = load_file(str(folder / "model.safetensors"))
    missing = sorted(set(original) - set(stored))
    extra = sorted(set(stored) - set(original))
    assert not extra, extra
    for k, v in stored.items():
        assert v.dtype == torch.float32 and torch.equal(v, original[k]), k
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    n = TINY_VOCAB_SIZE
    assert (tok.bos_token_id, len(tok), tok.convert_tokens_to_ids("[ENC]")) == (n, n + 2, n + 1)
    processor = BlipImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
    # The folder also loads as a whole processor, and its tokenizer from vocab.txt alone is the same one.
    whole = BlipProcessor.from_pretrained(str(folder), local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(folder / "vocab.txt", tmp)
        from_vocab = blip_tokenizer(Path(tmp) / "vocab.txt")
    for text in QUESTIONS + [a for answers in ANSWERS for a in answers] + WORDPIECE_TEXTS:
        assert whole.tokenizer(text).input_ids == tok(text).input_ids == from_vocab(text).input_ids, text
    return model, tok, processor, missing


@torch.no_grad()
def blip_references(model, tok, processor):
    ref = {}
    images = raw_images(torch.Generator().manual_seed(5))
    ref["images"] = images
    pixel_values = processor(images=[to_pil(im) for im in images], return_tensors="pt").pixel_values
    # do_rescale=False on the float images must give the same: the PIL images hold exactly these values.
    same = processor(images=list(images), do_rescale=False, return_tensors="pt").pixel_values
    assert torch.equal(pixel_values, same), (pixel_values - same).abs().max()
    assert pixel_values.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE), pixel_values.shape
    ref["pixel_values"] = pixel_values
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    ref["vision_last_hidden_state"] = image_embeds
    b = images.shape[0]
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    for q, question in enumerate(QUESTIONS):
        ids = tok(question, return_tensors="pt").input_ids
        assert ids[0, 0] == tok.cls_token_id and ids[0, -1] == tok.sep_token_id
        ref[f"question_{q}_input_ids"] = ids
        ones = torch.ones(b, ids.shape[1], dtype=torch.long)
        question_embeds = model.text_encoder(
            input_ids=ids.expand(b, -1),
            attention_mask=ones,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        ref[f"question_{q}_embeds"] = question_embeds
        scores = []
        for i, value in enumerate(ANSWERS[q]):
            pieces = tok(value, add_special_tokens=False).input_ids
            answer = torch.tensor([[tok.bos_token_id] + pieces + [tok.sep_token_id]])
            ref[f"answer_{q}_{i}_ids"] = answer
            logits = model.text_decoder(
                input_ids=answer.expand(b, -1),
                encoder_hidden_states=question_embeds,
                encoder_attention_mask=ones,
                return_dict=True,
            ).logits
            assert logits.shape == (b, answer.shape[1], len(tok)), logits.shape
            ref[f"answer_{q}_{i}_logits"] = logits
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            scores.append(log_probs.gather(-1, answer[:, 1:].expand(b, -1).unsqueeze(-1)).squeeze(-1).sum(-1))
        ref[f"scores_{q}"] = torch.stack(scores, dim=1)
        generated = model.generate(input_ids=ids.expand(b, -1), pixel_values=pixel_values, max_new_tokens=5)
        ref[f"generated_{q}"] = generated.to(torch.int64)
        log(f"  q{q} {question!r}: answers {[len(tok(v, add_special_tokens=False).input_ids) for v in ANSWERS[q]]} "
            f"pieces; scores {ref[f'scores_{q}'].tolist()}; generated {tok.batch_decode(generated)}")
    for k in ("pixel_values", "vision_last_hidden_state", "question_0_embeds", "answer_1_3_logits", "scores_1"):
        check_sane(k, ref[k])
        log(f"  {k:26s} {stats(ref[k])}")
    # The scores must tell the answers apart (else ranking them tests nothing).
    for q in range(len(QUESTIONS)):
        s = ref[f"scores_{q}"]
        assert (s.max(dim=1).values - s.min(dim=1).values).min() > 0.05, s
    return ref


TIED_NOTE = (
    "text_decoder.cls.predictions.decoder.weight is tied to text_decoder.bert.embeddings.word_embeddings.weight "
    "and text_decoder.cls.predictions.decoder.bias to text_decoder.cls.predictions.bias"
)

BLIP_DESCRIPTION = (
    "Reference outputs of transformers' BlipForQuestionAnswering and BlipProcessor loaded from this folder (eval, "
    "float32, CPU). images: raw RGB in [0, 1], multiples of 1/255. pixel_values: BlipImageProcessorPil.from_pretrained("
    "folder) on the images as 8-bit PIL images (resized straight to 32x32 with PIL bicubic, no crop; rescaled, "
    "normalised with OpenAI's CLIP mean/std). vision_last_hidden_state = model.vision_model(pixel_values)."
    "last_hidden_state [2, 17, 32] (post_layernorm applied). question_{q}_input_ids: the folder's tokenizer on "
    "questions[q], no padding, [CLS] ... [SEP]. question_{q}_embeds = model.text_encoder(input_ids expanded to both "
    "images, attention_mask ones, encoder_hidden_states=vision_last_hidden_state, encoder_attention_mask ones)"
    ".last_hidden_state. answer_{q}_{i}_ids = [bos [DEC]] + tokenizer(answers[q][i], add_special_tokens=False) + "
    "[SEP]; answer_{q}_{i}_logits = model.text_decoder(input_ids=answer ids expanded to both images, "
    "encoder_hidden_states=question_{q}_embeds, encoder_attention_mask ones).logits [2, T, vocab], NOT shifted: "
    "logits[:, t] predict ids[t + 1] (causal self-attention). scores_{q}[image, i] = sum over t = 1..T-1 of "
    "log_softmax(logits[image, t - 1])[ids[t]]: the log-likelihood of the answer's tokens and the final [SEP] "
    "after [DEC], as BLIP ranks candidate answers. generated_{q} = model.generate(input_ids expanded to both images, "
    "pixel_values, max_new_tokens=5) (greedy; starts with [DEC], stops at [SEP]), for information."
)


def build_blip():
    import transformers

    original = save_blip(OUT)
    model, tok, processor, missing = reload_blip(OUT, original)
    log(f"  model.safetensors leaves out (tied): {missing}")
    ref = {k: v.detach().contiguous() for k, v in blip_references(model, tok, processor).items()}
    for k, v in ref.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    meta = {
        "description": BLIP_DESCRIPTION,
        "questions": QUESTIONS,
        "answers": ANSWERS,
        "special_ids": {
            "pad": tok.pad_token_id,
            "unk": tok.unk_token_id,
            "cls": tok.cls_token_id,
            "sep": tok.sep_token_id,
            "mask": tok.mask_token_id,
            "bos [DEC]": tok.bos_token_id,
            "[ENC]": tok.convert_tokens_to_ids("[ENC]"),
        },
        "tied_weights": TIED_NOTE + "; model.safetensors leaves out " + ", ".join(missing) if missing else
        TIED_NOTE + "; model.safetensors stores both copies",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    write_references(OUT, ref, meta, 1e6)


def main():
    import transformers

    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    make_wordpiece_cases()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    log(f"building {OUT.relative_to(ROOT)}")
    build_blip()


if __name__ == "__main__":
    sys.exit(main())
