#!/usr/bin/env python3
"""PyTorch checkpoint files as torch.save writes them, for the safe reader (src/weights/torch_file.rs):
tests/fixtures/torch-files/.

How to run (from the repository root; CPU, seconds, no network):

    DMA_FIXTURE_DEPS=1 source scripts/env.sh && python3 scripts/make_torch_file_fixture.py

- state_dict.pt: a module's state dict (an OrderedDict with its `_metadata`) and more: every dtype the reader
  takes (f32, f64, f16, bf16, i64, i32, i16, i8, u8, bool), a view with an offset into a storage another tensor
  also uses, a transposed (non-contiguous) view, a 0-d tensor, an empty tensor, an nn.Parameter, and a nested dict.
- lightning.ckpt: a Lightning-style checkpoint: {"state_dict": {...}, "global_step", "epoch", a float, a string,
  bytes}; the state dict is what is read.
- expected.safetensors: each tensor the reader should give, by the key it should give it under.
- hostile.pt: a state dict with an object whose pickle calls os.system (nothing runs when it is written; torch.load
  without weights_only would run it). legacy.pt: torch's pre-1.6 format. deflated.pt: state_dict.pt with its
  entries compressed (PyTorch never writes that).
- tiny-dit-transformer.bin: tests/fixtures/tiny-dit's transformer saved by diffusers with
  safe_serialization=False (diffusion_pytorch_model.bin).
- ldm.ckpt: tests/fixtures/tiny-sd1/ldm.safetensors's tensors in a Lightning checkpoint, as SD 1.x .ckpt files are.
"""
import collections
import os
import shutil
import tempfile
import zipfile

import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIXTURES, "torch-files")


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo this checkpoint ran code",))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    expected = {}

    module = torch.nn.Linear(3, 2)
    sd = module.state_dict()  # OrderedDict with _metadata
    expected.update({k: v.clone() for k, v in sd.items()})
    for name, dtype in [("f64", torch.float64), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
        sd[name] = torch.randn(2, 3).to(dtype)
    sd["i64"] = torch.tensor([-(2**40), 0, 2**40], dtype=torch.int64)
    sd["i32"] = torch.tensor([-(2**30), 7], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-100, 100], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    base = torch.arange(10, dtype=torch.float32)
    sd["base"] = base
    sd["offset_view"] = base[2:5]  # shares base's storage at offset 2
    sd["transposed"] = torch.randn(3, 4).t()  # strides (1, 4)
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(4))
    sd["nested"] = {"inner": torch.randn(2, 2), "count": 3}
    for k, v in sd.items():
        if k == "nested":
            expected["nested.inner"] = v["inner"].clone()
        elif k not in expected:
            expected[k] = v.detach().clone().contiguous()
    torch.save(sd, os.path.join(OUT, "state_dict.pt"))

    lightning_sd = {"model.w": torch.randn(3, 3), "model.b": torch.randn(3).half()}
    torch.save({"state_dict": lightning_sd, "global_step": 7, "epoch": 1, "lr": 0.5, "name": "tiny", "blob": b"\x00\xff"},
               os.path.join(OUT, "lightning.ckpt"))
    save_file(expected, os.path.join(OUT, "expected.safetensors"))
    save_file({k: v.contiguous() for k, v in lightning_sd.items()}, os.path.join(OUT, "expected_lightning.safetensors"))

    torch.save({"w": torch.randn(2), "payload": Hostile()}, os.path.join(OUT, "hostile.pt"))
    torch.save({"w": torch.randn(2)}, os.path.join(OUT, "legacy.pt"), _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(os.path.join(OUT, "state_dict.pt")) as src, \
            zipfile.ZipFile(os.path.join(OUT, "deflated.pt"), "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))

    with tempfile.TemporaryDirectory() as tmp:
        transformer = DiTTransformer2DModel.from_pretrained(os.path.join(FIXTURES, "tiny-dit"), subfolder="transformer")
        transformer.save_pretrained(tmp, safe_serialization=False)
        shutil.copy(os.path.join(tmp, "diffusion_pytorch_model.bin"), os.path.join(OUT, "tiny-dit-transformer.bin"))

    ldm = load_file(os.path.join(FIXTURES, "tiny-sd1", "ldm.safetensors"))
    torch.save({"state_dict": ldm, "global_step": 0}, os.path.join(OUT, "ldm.ckpt"))

    # The reader must refuse the hostile file without running it; torch itself refuses it when told to be safe.
    try:
        torch.load(os.path.join(OUT, "hostile.pt"), weights_only=True)
        raise SystemExit("torch.load(weights_only=True) accepted hostile.pt")
    except Exception as e:  # noqa: BLE001 - any refusal will do
        assert "system" in str(e), e
    loaded = torch.load(os.path.join(OUT, "state_dict.pt"), weights_only=True)
    assert loaded["offset_view"].storage_offset() == 2 and loaded["transposed"].stride() == (1, 4)
    print(f"wrote {OUT}: {sorted(os.listdir(OUT))}")


if __name__ == "__main__":
    main()
