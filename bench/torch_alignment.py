#!/usr/bin/env python3
"""PyTorch/diffusers counterpart of examples/bench_alignment.rs: the same modes, inputs and JSON line.

    python3 bench/torch_alignment.py (--unet DIR | --transformer DIR) [--modes enc_fwd,enc_fwd_bwd,full_fwd,full_fwd_bwd]
        [--batch 1] [--reps 3] [--warmup 1] [--threads N] [--skip-check]

Modes (weights frozen, as in the Rust crate: gradients go to the latent only):
- enc_fwd: the encoder half of diffusers' UNet2DConditionModel.forward (time embedding, conv_in, down_blocks,
  mid_block), run by hand as diffusers' forward runs it, under no_grad;
- enc_fwd_bwd: the alignment iteration: that h, loss = sum over latents of the mean squared distance to a fixed
  random target, gradient with respect to the latent;
- full_fwd: unet(...) under no_grad;
- full_fwd_bwd: unet(...) with autograd, h read by a forward hook on mid_block, the same loss, gradient to the latent.

With --transformer (a DiTTransformer2DModel folder) the same modes run on a DiT: h is the last transformer block's
output (diffusers' forward up to it, by hand, for the encoder path; a hook on that block in the full forward), the
condition is class ids instead of text.

The inputs are drawn in the same order from the same libtorch CPU generator as the Rust example, so the check
values (loss, mean |h|, mean |grad|) of the two should agree to float precision.
"""
import argparse
import json
import statistics
import time

import torch

MODES = ("enc_fwd", "enc_fwd_bwd", "full_fwd", "full_fwd_bwd")


def proc_status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def encode_h(unet, sample, timestep, condition):
    """diffusers' UNet2DConditionModel.forward up to and including mid_block (SD 1.x/2.x and SDXL: no class or
    adapter embeddings, no attention masks; SDXL's added embedding from `added`)."""
    context, added = condition
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, None)
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=context, added_cond_kwargs=added)
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    x = unet.conv_in(sample)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, _ = block(
                hidden_states=x,
                temb=emb,
                encoder_hidden_states=context,
                attention_mask=None,
                cross_attention_kwargs=None,
                encoder_attention_mask=None,
            )
        else:
            x, _ = block(hidden_states=x, temb=emb)
    return unet.mid_block(
        x, emb, encoder_hidden_states=context, attention_mask=None, cross_attention_kwargs=None, encoder_attention_mask=None
    )


def distance_to(h, target):
    """dma::method::hspace::distance_to: mean squared distance of each h to target, one value per latent."""
    return (h - target).square().flatten(1).mean(1)


def dit_encode_h(transformer, sample, timestep, labels):
    """diffusers' DiTTransformer2DModel.forward up to and including the last transformer block."""
    x = transformer.pos_embed(sample)
    timestep = timestep.expand(sample.shape[0])
    for block in transformer.transformer_blocks:
        x = block(x, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, timestep=timestep,
                  cross_attention_kwargs=None, class_labels=labels)
    return x


class Bench:
    """`condition` is (the text context, SDXL's added_cond_kwargs or None) for a UNet, the class ids for a DiT."""

    def __init__(self, net, latent, timestep, condition, target):
        self.net, self.latent, self.timestep, self.condition, self.target = net, latent, timestep, condition, target
        self.is_dit = hasattr(net, "transformer_blocks")
        self.captured = None
        h_module = net.transformer_blocks[-1] if self.is_dit else net.mid_block
        h_module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.captured = output

    def encode_h(self, sample):
        if self.is_dit:
            return dit_encode_h(self.net, sample, self.timestep, self.condition)
        return encode_h(self.net, sample, self.timestep, self.condition)

    def full_h(self, sample):
        self.captured = None
        if self.is_dit:
            timestep = self.timestep.expand(sample.shape[0])
            out = self.net(sample, timestep=timestep, class_labels=self.condition, return_dict=False)[0]
        else:
            context, added = self.condition
            out = self.net(sample, self.timestep, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]
        h, self.captured = self.captured, None
        return out, h

    def run(self, mode):
        """One repetition; everything it allocates is freed before it returns (as in the Rust example)."""
        if mode == "enc_fwd":
            with torch.no_grad():
                h = self.encode_h(self.latent)
            return {"h_abs_mean": h.abs().mean(dtype=torch.float64).item()}
        if mode == "full_fwd":
            with torch.no_grad():
                out, h = self.full_h(self.latent)
            return {
                "h_abs_mean": h.abs().mean(dtype=torch.float64).item(),
                "sample_abs_mean": out.abs().mean(dtype=torch.float64).item(),
            }
        leaf = self.latent.detach().requires_grad_(True)
        if mode == "enc_fwd_bwd":
            h = self.encode_h(leaf)
        else:
            _out, h = self.full_h(leaf)
        loss = distance_to(h, self.target).sum()
        (grad,) = torch.autograd.grad(loss, leaf)
        return {"loss": loss.item(), "grad_abs_mean": grad.abs().mean(dtype=torch.float64).item()}


def serve(bench, ready):
    """The lockstep protocol: one JSON line per mode name read from stdin."""
    import sys

    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        mode = line.strip()
        if mode == "quit":
            break
        if mode == "rss":
            reply = {"rss_bytes": proc_status_bytes("VmRSS"), "hwm_bytes": proc_status_bytes("VmHWM")}
        elif mode in MODES:
            c0, t0 = time.process_time(), time.perf_counter()
            stats = bench.run(mode)
            wall = time.perf_counter() - t0
            reply = {"mode": mode, "wall": wall, "cpu": time.process_time() - c0, "check": stats}
        else:
            reply = {"error": f"unknown mode {mode!r}"}
        print(json.dumps(reply), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--unet")
    which.add_argument("--transformer", help="a DiTTransformer2DModel folder, instead of --unet")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timestep", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's own choice)")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument(
        "--serve",
        action="store_true",
        help="print a JSON ready line, then run one repetition per mode name read from stdin (lockstep with the Rust "
        "example, driven by bench/compare_alignment.py)",
    )
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (expected one of {', '.join(MODES)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = {"intra_op": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}

    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    start = time.perf_counter()
    if args.transformer:
        net = DiTTransformer2DModel.from_pretrained(args.transformer, torch_dtype=torch.float32).eval()
    else:
        net = UNet2DConditionModel.from_pretrained(args.unet, torch_dtype=torch.float32).eval()
    net.requires_grad_(False)
    load_s = time.perf_counter() - start
    load_peak = proc_status_bytes("VmHWM")

    # The latent, the condition, the target h: the order of examples/bench_alignment.rs.
    torch.manual_seed(args.seed)
    b = args.batch
    c = net.config
    side = c.sample_size
    latent = torch.randn(b, c.in_channels, side, side)
    if args.transformer:
        condition = torch.randint(c.num_embeds_ada_norm, (b,))
        target = torch.randn(1, (side // c.patch_size) ** 2, c.num_attention_heads * c.attention_head_dim)
    else:
        context = torch.randn(b, 77, c.cross_attention_dim)
        added = None
        if c.addition_embed_type == "text_time":
            # SDXL: a pooled text embedding, and the size numbers of a whole image of the latent's size.
            pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
            size = side * 8
            added = {"text_embeds": torch.randn(b, pooled), "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * b, dtype=torch.float32)}
        condition = (context, added)
        h_side = side // 2 ** (len(c.block_out_channels) - 1)
        target = torch.randn(1, c.block_out_channels[-1], h_side, h_side)
    timestep = torch.tensor(args.timestep)
    bench = Bench(net, latent, timestep, condition, target)

    h_diff = None
    if not args.skip_check:
        with torch.no_grad():
            h_enc = bench.encode_h(latent)
            _, h_full = bench.full_h(latent)
            h_diff = (h_enc - h_full).abs().max().item()
        del h_enc, h_full

    if args.serve:
        return serve(bench, {"impl": "pytorch", "ready": True, "batch": b, "threads": threads, "load_s": load_s,
                             "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
                             "h_encode_vs_full_max_abs_diff": h_diff})

    rss_before = proc_status_bytes("VmRSS")
    reset = reset_peak_rss()

    checks = {}
    for _ in range(args.warmup):
        for m in modes:
            checks[m] = bench.run(m)
    times = {m: [] for m in modes}
    for _ in range(args.reps):
        for m in modes:
            t0 = time.perf_counter()
            stats = bench.run(m)
            times[m].append(time.perf_counter() - t0)
            checks.setdefault(m, stats)
    peak = proc_status_bytes("VmHWM")

    out = {
        "impl": "pytorch",
        "batch": b,
        "threads": threads,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        "load_s": load_s,
        "reps": args.reps,
        "warmup": args.warmup,
        "times": times,
        "median": {m: statistics.median(t) if t else None for m, t in times.items()},
        "rss": {
            "load_peak_bytes": load_peak,
            "before_bytes": rss_before,
            "peak_bytes": peak if reset else None,
            "peak_reset": reset,
        },
        "h_encode_vs_full_max_abs_diff": h_diff,
        "check": checks,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
