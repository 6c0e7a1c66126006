#!/usr/bin/env python3
"""Build tests/fixtures/tiny-image-reward: a tiny random ImageReward model, built and run with the real `image-reward`
package's own code (PyPI image-reward==1.5: ImageReward, BLIP_Pretrain, BLIP's VisionTransformer and med.py
BertModel, MLP, _transform, ImageReward.score), saved as THUDM/ImageReward publishes it, and its reference outputs,
which the Rust ImageReward model is checked against.

How to run (from the repository root, CPU only, a few seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_image_reward_fixture.py

(scripts/env.sh installs, once, image-reward==1.5 and what it imports: timm==0.6.13, fairscale==0.4.13 and
torchvision==0.26.0, the build paired with torch 2.11, all with --no-deps so torch stays as it is. All import as they
are with torch 2.11; ImageReward's Resize/ToTensor preprocessing is torchvision's, so torchvision is the real one.)

It is deterministic (fixed seeds, float32 on CPU) and rewrites, from scratch, tests/fixtures/tiny-image-reward/:

* ImageReward.pt: torch.save(model.state_dict()) of the ImageReward module, as the published ImageReward.pt is (a
  plain state dict: blip.visual_encoder.*, blip.text_encoder.* (with its int64 embeddings.position_ids buffer),
  blip.vision_proj.*, blip.text_proj.*, mlp.layers.*). Its floating-point tensors are stored as float16 (the
  published file is float32): every weight is float16-representable (make_fixtures.perturb_ rounds them), so the
  values are exactly those of the float32 model the references come from, and the file is half the size (the MLP's
  hard-coded 1024x128 layer alone is 0.5 MB in float32). A loader must upcast.
* med_config.json: BLIP's med_config.json fields (what ImageReward's published med_config.json has) with tiny values:
  BERT width 32, 2 layers, 4 heads (head dim 8), MLP 48, 64 positions, the tiny vocabulary + [DEC] + [ENC]. Its
  encoder_width is left at the published 768: BLIP_Pretrain overwrites it with the ViT's width (64) before building
  the text encoder, so a loader must not trust it.
* vocab.txt: the tiny BERT vocabulary of scripts/make_blip_vqa_fixture.py, standing for bert-base-uncased's (which
  ImageReward's init_tokenizer downloads); the tokenizer is that vocabulary + bos [DEC] + additional [ENC].
* reference.safetensors + reference.json: two raw images in [0, 1] (multiples of 1/255, so the 8-bit PIL images
  hold them exactly), model.preprocess's pixel values, the ViT's output, the prompts' ids and mask, the text
  encoder's [CLS] features and model.score's rewards; reference.json describes every tensor.

How the package is made to build a tiny model, and to run under transformers 5 (nothing in it is edited):
* `import ImageReward` runs its __init__, which imports openai's `clip`, `datasets` and diffusers' training code for
  other scorers and ReFL; the package and its `models` subpackage are entered in sys.modules as bare namespace
  modules instead, so only ImageReward/ImageReward.py and models/BLIP/*.py are imported.
* models/BLIP/med.py (BLIP's copy of transformers 4.15's BERT) imports apply_chunking_to_forward, prune_linear_layer
  and find_pruneable_heads_and_indices from transformers.modeling_utils, and calls PreTrainedModel.get_head_mask and
  invert_attention_mask; transformers 5 moved the first two to transformers.pytorch_utils and dropped the rest. They
  are put back as transformers 4 defined them (find_pruneable_heads_and_indices, used only to prune heads, raises).
  Its models call init_weights() in __init__, which in transformers 5 needs what post_init (never called there)
  sets up: BertPreTrainedModel.init_weights is transformers 4's, self.apply(self._init_weights) (BertModel has no
  tied weights; the values are redrawn below anyway).
* init_tokenizer calls BertTokenizer.from_pretrained('bert-base-uncased'): the name BertTokenizer in
  models/BLIP/blip.py is replaced by a subclass whose from_pretrained builds the tokenizer from this vocab.txt, so
  the package's own init_tokenizer adds [DEC] and [ENC] as always; the subclass also gives
  additional_special_tokens_ids, which transformers 5 renamed extra_special_tokens_ids.
* ImageReward.__init__ hard-codes BLIP_Pretrain(image_size=224, vit='large'), _transform(224) and MLP(768): create_vit
  as blip_pretrain.py imported it is replaced by one that returns the package's VisionTransformer(img_size=32,
  patch_size=8, embed_dim=64, depth=2, num_heads=1) (head dim 64, as in every BLIP ViT) and width 64, then
  model.preprocess = _transform(32) and model.mlp = MLP(32).
* fairscale (imported by vit.py for checkpoint_wrapper, only used with use_grad_checkpointing=True) is the real one.

Weights are drawn at the scale of trained ones (make_blip_vqa_fixture.rescale_), then perturbed (make_fixtures.
perturb_: non-trivial layer norms, float16-representable values); the MLP gets std fan_in^-1/2 weights instead of
the package's 1/(width+1), which would make every reward about -0.16 (4x that in its last layer, so the rewards
spread by about 1), and small biases.
"""

import importlib.metadata
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy
import torch

from make_blip_vqa_fixture import raw_images, rescale_, to_pil, write_vocab
from make_fixtures import FIXTURES, ROOT, check_sane, log, perturb_, stats, write_references

OUT = FIXTURES / "tiny-image-reward"
PROMPTS = ["a photo of a sneaker", "a red boot"]
IMAGE_SIZE = 32
VISION_WIDTH = 64
TEXT_WIDTH = 32
MAX_LENGTH = 35  # ImageReward.score's
MLP_LAST_GAIN = 4.0


def med_config(vocab_size):
    """BLIP's med_config.json (the file ImageReward publishes), tiny."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TEXT_WIDTH,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": 768,
        "add_cross_attention": True,
    }


# ------------------------------------------------------------------------------------------------------------------
# Importing the package under transformers 5
# ------------------------------------------------------------------------------------------------------------------


def _get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
    """transformers 4's ModuleUtilsMixin.get_head_mask, for head_mask None (all ImageReward passes)."""
    if head_mask is not None:
        raise NotImplementedError("head masks")
    return [None] * num_hidden_layers


def _invert_attention_mask(self, encoder_attention_mask):
    """transformers 4's ModuleUtilsMixin.invert_attention_mask."""
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    if encoder_attention_mask.dim() == 2:
        extended = encoder_attention_mask[:, None, None, :]
    extended = extended.to(dtype=self.dtype)
    return (1.0 - extended) * torch.finfo(self.dtype).min


def _init_weights_v4(self):
    """transformers 4's PreTrainedModel.init_weights for a model without pruned heads or tied weights (transformers
    5's needs what its post_init sets up, which med.py never calls)."""
    self.apply(self._init_weights)


def _find_pruneable_heads_and_indices(*args, **kwargs):
    raise NotImplementedError("pruning heads")


def import_image_reward(vocab_path):
    """Imports the package's ImageReward and BLIP modules, patched (see the module docstring); returns the module
    ImageReward.ImageReward."""
    import transformers.modeling_utils
    import transformers.pytorch_utils
    from transformers import BertTokenizer

    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        assert not hasattr(transformers.modeling_utils, name), f"transformers has {name} again: drop this shim"
        setattr(transformers.modeling_utils, name, getattr(transformers.pytorch_utils, name))
    transformers.modeling_utils.find_pruneable_heads_and_indices = _find_pruneable_heads_and_indices

    spec = importlib.util.find_spec("ImageReward")
    assert spec is not None, "image-reward is not installed: run `DMA_FIXTURE_DEPS=1 source scripts/env.sh`"
    root = Path(spec.submodule_search_locations[0])
    for name, path in (("ImageReward", root), ("ImageReward.models", root / "models")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package

    import ImageReward.models.BLIP.med as med

    for name, fn in (("get_head_mask", _get_head_mask), ("invert_attention_mask", _invert_attention_mask)):
        assert not hasattr(med.BertPreTrainedModel, name), f"transformers has {name} again: drop this shim"
        setattr(med.BertPreTrainedModel, name, fn)
    med.BertPreTrainedModel.init_weights = _init_weights_v4

    import ImageReward.ImageReward as image_reward
    import ImageReward.models.BLIP.blip as blip
    import ImageReward.models.BLIP.blip_pretrain as blip_pretrain
    import ImageReward.models.BLIP.vit as vit

    class TinyBertTokenizer(BertTokenizer):
        """Stands for BertTokenizer in blip.py: from_pretrained('bert-base-uncased') gives the tiny vocabulary's."""

        @classmethod
        def from_pretrained(cls, name):
            assert name == "bert-base-uncased", name
            # (Positionally: transformers 5's BertTokenizer ignores a `vocab_file=` keyword.)
            return cls(str(vocab_path), do_lower_case=True, model_max_length=512)

        @property
        def additional_special_tokens_ids(self):  # transformers 5 calls them extra_special_tokens
            return self.extra_special_tokens_ids

    blip.BertTokenizer = TinyBertTokenizer

    def tiny_create_vit(vit_name, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        assert vit_name == "large" and image_size == 224, (vit_name, image_size)  # what ImageReward asks for
        encoder = vit.VisionTransformer(
            img_size=IMAGE_SIZE,
            patch_size=8,
            embed_dim=VISION_WIDTH,
            depth=2,
            num_heads=1,
            use_grad_checkpointing=use_grad_checkpointing,
            ckpt_layer=ckpt_layer,
            drop_path_rate=0.1 or drop_path_rate,  # as create_vit's 'large' (no effect in eval mode)
        )
        return encoder, VISION_WIDTH

    blip_pretrain.create_vit = tiny_create_vit
    return image_reward


# ------------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------------


def build_model(image_reward, config_path):
    torch.manual_seed(61)
    model = image_reward.ImageReward(med_config=str(config_path), device="cpu")
    model.preprocess = image_reward._transform(IMAGE_SIZE)
    model.mlp = image_reward.MLP(TEXT_WIDTH)
    rescale_(model.blip, torch.Generator().manual_seed(63))
    generator = torch.Generator().manual_seed(62)
    perturb_(model, generator)
    with torch.no_grad():
        linears = [layer for layer in model.mlp.layers if isinstance(layer, torch.nn.Linear)]
        for layer in linears:
            # std fan_in^-1/2, and 4x that in the last layer, so that the rewards spread by about 1
            gain = MLP_LAST_GAIN if layer is linears[-1] else 1.0
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * gain * layer.in_features**-0.5)
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
            for p in (layer.weight, layer.bias):
                p.copy_(p.half().float())
    model.eval()
    text = model.blip.text_encoder
    assert text.config.encoder_width == VISION_WIDTH and text.config.hidden_size == TEXT_WIDTH
    assert text.encoder.layer[0].crossattention.self.key.in_features == VISION_WIDTH
    assert model.blip.visual_encoder.blocks[0].attn.num_heads == 1
    return model


def save_state_dict(model, path):
    """torch.save of the state dict, floating-point tensors as float16 (exact: see the module docstring)."""
    state = model.state_dict()
    stored = type(state)()
    stored._metadata = state._metadata  # as torch.save(model.state_dict()) writes it
    for k, v in state.items():
        if v.is_floating_point():
            assert torch.equal(v.half().float(), v), f"{k} is not float16-representable"
            v = v.half()
        stored[k] = v.clone()
    torch.save(stored, str(path))
    return {k: v.clone() for k, v in state.items()}


def reload_model(image_reward, config_path, path, original):
    """A fresh model loaded from the file as ImageReward's load() does (there with strict=False; here strict)."""
    torch.manual_seed(99)
    model = image_reward.ImageReward(med_config=str(config_path), device="cpu")
    model.preprocess = image_reward._transform(IMAGE_SIZE)
    model.mlp = image_reward.MLP(TEXT_WIDTH)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    got = model.state_dict()
    assert set(got) == set(original)
    for k, v in original.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), f"{k} changed on reload"
    return model, state


# ------------------------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def references(model):
    ref = {}
    images = raw_images(torch.Generator().manual_seed(5))
    pils = [to_pil(im) for im in images]
    for pil, im in zip(pils, images):  # the 8-bit images hold the raw values exactly
        assert torch.equal(torch.from_numpy(numpy.asarray(pil)).permute(2, 0, 1) / 255, im)
    ref["images"] = images
    pixel_values = torch.stack([model.preprocess(pil) for pil in pils])
    assert pixel_values.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE), pixel_values.shape
    ref["pixel_values"] = pixel_values
    image_embeds = model.blip.visual_encoder(pixel_values)
    assert image_embeds.shape == (2, (IMAGE_SIZE // 8) ** 2 + 1, VISION_WIDTH), image_embeds.shape
    ref["image_embeds"] = image_embeds

    tok = model.blip.tokenizer
    text = tok(PROMPTS, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    for i, prompt in enumerate(PROMPTS):  # score() tokenizes one prompt at a time: the same
        one = tok(prompt, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        assert torch.equal(one.input_ids[0], text.input_ids[i])
        assert torch.equal(one.attention_mask[0], text.attention_mask[i])
    ref["input_ids"] = text.input_ids.to(torch.int64)
    ref["attention_mask"] = text.attention_mask.to(torch.int64)

    features = []
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    for i in range(len(PROMPTS)):
        out = model.blip.text_encoder(
            text.input_ids[i : i + 1].expand(2, -1),
            attention_mask=text.attention_mask[i : i + 1].expand(2, -1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            return_dict=True,
        )
        features.append(out.last_hidden_state[:, 0, :])
    ref["text_features"] = torch.stack(features)  # [prompt, image, width]

    rewards = torch.tensor([[model.score(prompt, pil) for pil in pils] for prompt in PROMPTS], dtype=torch.float32)
    ref["rewards"] = rewards
    # The package's batched path (a list of images) and the features above give the same rewards.
    by_list = torch.tensor([model.score(prompt, pils) for prompt in PROMPTS], dtype=torch.float32)
    assert torch.allclose(by_list, rewards, atol=1e-5), (by_list, rewards)
    from_features = ((model.mlp(ref["text_features"]) - model.mean) / model.std).squeeze(-1)
    assert torch.allclose(from_features, rewards, atol=1e-5), (from_features, rewards)

    for k in ("pixel_values", "image_embeds", "text_features", "rewards"):
        check_sane(k, ref[k])
        log(f"  {k:14s} {stats(ref[k])}")
    log(f"  rewards (prompt x image): {rewards.tolist()}")
    assert rewards.std() > 0.3, f"rewards hardly vary: {rewards.tolist()}"
    assert (rewards[:, 0] - rewards[:, 1]).abs().min() > 0.05, "the images must score differently"
    assert (rewards[0] - rewards[1]).abs().min() > 0.05, "the prompts must score differently"
    return ref


DESCRIPTION = (
    "Reference outputs of the image-reward package's ImageReward (tiny; see scripts/make_image_reward_fixture.py), "
    "float32 on CPU, eval mode, its weights those of ImageReward.pt. images: raw RGB [2, 3, 48, 48] in [0, 1], "
    "multiples of 1/255. pixel_values = model.preprocess(PIL image) (torchvision Resize(32, bicubic) on the PIL "
    "image, i.e. PIL's bicubic; CenterCrop(32); ToTensor; Normalize with OpenAI's CLIP mean/std), stacked. "
    "image_embeds = model.blip.visual_encoder(pixel_values) [2, 17, 64] (BLIP's ViT: class token + 16 patches, "
    "final LayerNorm applied). input_ids / attention_mask = model.blip.tokenizer(prompt, padding='max_length', "
    "truncation=True, max_length=35), [CLS] ... [SEP] then [PAD] (ImageReward does not put [ENC] first). "
    "text_features[p, i] = model.blip.text_encoder(input_ids[p], attention_mask[p], encoder_hidden_states="
    "image_embeds[i], encoder_attention_mask ones).last_hidden_state[0, 0] (BLIP's med.py BERT: padding masked with "
    "-10000 in self-attention; no token type embeddings; no pooler; cross-attention to the image in every layer; "
    "LayerNorm eps 1e-12; the ViT's is 1e-6). "
    "rewards[p, i] = model.score(prompts[p], PIL image i) = (model.mlp(text_features[p, i]) - reward_mean) / "
    "reward_std; model.mlp is 5 Linear layers (32 -> 1024 -> 128 -> 64 -> 16 -> 1) with no activations between "
    "them (the package's dropouts are off in eval mode)."
)


def main():
    import torchvision
    import transformers

    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    log(f"building {OUT.relative_to(ROOT)}")
    vocab_path = OUT / "vocab.txt"
    n = write_vocab(vocab_path)
    config_path = OUT / "med_config.json"
    with open(config_path, "w") as f:
        json.dump(med_config(n + 2), f, indent=2)
        f.write("\n")
    image_reward = import_image_reward(vocab_path)
    model = build_model(image_reward, config_path)
    tok = model.blip.tokenizer
    assert (tok.bos_token_id, tok.enc_token_id, len(tok)) == (n, n + 1, n + 2), (tok.bos_token_id, tok.enc_token_id)
    original = save_state_dict(model, OUT / "ImageReward.pt")
    model, state = reload_model(image_reward, config_path, OUT / "ImageReward.pt", original)

    ref = {k: v.detach().contiguous() for k, v in references(model).items()}
    for k, v in ref.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    meta = {
        "description": DESCRIPTION,
        "prompts": PROMPTS,
        "reward_mean": model.mean,
        "reward_std": model.std,
        "special_ids": {
            "pad": tok.pad_token_id,
            "cls": tok.cls_token_id,
            "sep": tok.sep_token_id,
            "unk": tok.unk_token_id,
            "bos [DEC]": tok.bos_token_id,
            "[ENC]": tok.enc_token_id,
        },
        "state_dict": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torchvision": torchvision.__version__,
            "image-reward": importlib.metadata.version("image-reward"),
            "timm": importlib.metadata.version("timm"),
            "fairscale": importlib.metadata.version("fairscale"),
        },
    }
    write_references(OUT, ref, meta, 1e6)


if __name__ == "__main__":
    sys.exit(main())
