#!/usr/bin/env python3
"""Summarises the JSON lines bench/alignment.sh collected (one line per process of examples/bench_alignment.rs
or bench/torch_alignment.py, each tagged by alignment.sh with "round" and "role") as Markdown tables.

    python3 bench/summarize_alignment.py RESULTS.jsonl [--budget-gb 24]

Timings (bench/compare_alignment.py): per round and mode, one Rust and one PyTorch repetition back to back; a ratio
is taken within each pair, and the table gives the median of the pair ratios with their range. Seconds are medians
over the rounds, with min-max.

Memory: peak RSS (VmHWM, reset once the model and the inputs were loaded, so the transient peak of loading is
excluded) of one process per batch size running only the alignment iteration; a least-squares line over the batch
sizes gives the fixed part (intercept: weights, libraries, workspace) and the slope per latent; the largest batch
that fits in the budget is derived from them, not measured.
"""
import argparse
import json
import statistics
import sys

MODES = ("enc_fwd", "enc_fwd_bwd", "full_fwd", "full_fwd_bwd")
LABEL = {
    "enc_fwd": "encode_h forward (no grad)",
    "enc_fwd_bwd": "**alignment iteration**: encode_h forward + backward to latent",
    "full_fwd": "full forward (no grad)",
    "full_fwd_bwd": "full forward + backward from the h loss",
}
GB = 1e9


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs):
    return f"{min(xs):.3g}-{max(xs):.3g}" if xs else "-"


def fit_line(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--budget-gb", type=float, nargs="+", default=[24.0], help="memory budget(s) in GB (1e9 bytes)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.results) if line.strip().startswith("{")]
    pairs = [r for r in rows if r.get("role") == "pair"]
    ready = [r for r in rows if r.get("role") == "ready"]
    memory = [r for r in rows if r.get("role") == "memory"]
    out = []
    p = out.append

    if pairs:
        rounds = sorted({r["round"] for r in pairs})
        threads = {r["impl"]: r["threads"]["intra_op"] for r in ready}
        loads = [r["loadavg"][0] for r in pairs]
        p(f"Timings: batch 1, {len(rounds)} rounds; in each round every mode ran once in Rust and once in PyTorch back "
          f"to back (both processes loaded, taking turns; which went first alternated), after 1 warm-up of each. "
          f"Intra-op threads: Rust {threads.get('rust')}, PyTorch {threads.get('pytorch')}. "
          f"1-minute load average during the pairs: {min(loads):.1f}-{max(loads):.1f} (2 cores).")
        p("")
        p("| mode | Rust s (median, min-max) | PyTorch s (median, min-max) | Rust/PyTorch per pair (median, min-max) "
          "| same, CPU seconds |")
        p("|---|---|---|---|---|")
        wall = lambda m, impl: [r[impl]["wall"] for r in pairs if r["mode"] == m]
        for m in MODES:
            ps = [r for r in pairs if r["mode"] == m]
            if not ps:
                continue
            rr = [r["rust"]["wall"] / r["pytorch"]["wall"] for r in ps]
            rc = [r["rust"]["cpu"] / r["pytorch"]["cpu"] for r in ps if r["pytorch"]["cpu"] > 0]
            p(f"| {LABEL[m]} | {med(wall(m, 'rust')):.2f} ({spread(wall(m, 'rust'))}) | "
              f"{med(wall(m, 'pytorch')):.2f} ({spread(wall(m, 'pytorch'))}) | **{med(rr):.3f}** ({spread(rr)}) | "
              f"{med(rc):.3f} ({spread(rc)}) |")
        p("")
        p("Encoder-only speed-up (full / encoder-only, per round, median and min-max):")
        p("")
        p("| | Rust | PyTorch |")
        p("|---|---|---|")
        get = {(r["round"], r["mode"]): r for r in pairs}
        for label, full, enc in [("forward only", "full_fwd", "enc_fwd"), ("forward + backward", "full_fwd_bwd", "enc_fwd_bwd")]:
            cells = []
            for impl in ("rust", "pytorch"):
                x = [get[(rd, full)][impl]["wall"] / get[(rd, enc)][impl]["wall"] for rd in rounds
                     if (rd, full) in get and (rd, enc) in get]
                cells.append(f"{med(x):.2f}x ({spread(x)})" if x else "-")
            p(f"| {label} | {cells[0]} | {cells[1]} |")
        p("")
        ch = next((r for r in pairs if r["mode"] == "enc_fwd_bwd"), None)
        if ch:
            a, b = ch["rust"]["check"], ch["pytorch"]["check"]
            rel = lambda k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-30)
            hd = {r["impl"]: r.get("h_encode_vs_full_max_abs_diff") for r in ready}
            p(f"Cross-check (same seeded inputs): alignment loss Rust {a['loss']:.7g} vs PyTorch {b['loss']:.7g} "
              f"(rel. diff {rel('loss'):.1e}); mean |grad| {a['grad_abs_mean']:.7g} vs {b['grad_abs_mean']:.7g} "
              f"(rel. diff {rel('grad_abs_mean'):.1e}); max abs difference between h from the encoder-only path and h "
              f"from the full forward: Rust {hd.get('rust')}, PyTorch (hand-run encoder vs forward hook on h's block: the mid block, or a DiT's last transformer block) "
              f"{hd.get('pytorch')}.")
            p("")

    if memory:
        p(f"Peak RSS of the alignment iteration (one process per batch size, {memory[0]['reps']} iteration(s), "
          "VmHWM reset after loading):")
        p("")
        p("| batch | Rust peak GB | Rust s/iteration | PyTorch peak GB | PyTorch s/iteration | Rust/PyTorch s |")
        p("|---|---|---|---|---|---|")
        batches = sorted({r["batch"] for r in memory})
        mem = {(r["impl"], r["batch"]): r for r in memory}
        for b in batches:
            cells = []
            for impl in ("rust", "pytorch"):
                r = mem.get((impl, b))
                if r and r["rss"]["peak_bytes"]:
                    cells += [f"{r['rss']['peak_bytes'] / GB:.2f}", f"{med(r['times']['enc_fwd_bwd']):.1f}"]
                else:
                    cells += ["-", "-"]
            seconds = [med(mem[(impl, b)]["times"]["enc_fwd_bwd"]) if (impl, b) in mem else None for impl in ("rust", "pytorch")]
            cells.append(f"{seconds[0] / seconds[1]:.3f}" if None not in seconds else "-")
            p(f"| {b} | " + " | ".join(cells) + " |")
        p("")
        for impl in ("rust", "pytorch"):
            pts = [(b, mem[(impl, b)]["rss"]["peak_bytes"]) for b in batches if (impl, b) in mem and mem[(impl, b)]["rss"]["peak_bytes"]]
            if len(pts) < 2:
                continue
            fixed, slope = fit_line([x for x, _ in pts], [y for _, y in pts])
            resid = max(abs(y - (fixed + slope * x)) for x, y in pts)
            largest = ", ".join(
                f"{budget:g} GB: **{int((budget * GB - fixed) // slope) if slope > 0 else None}**" for budget in args.budget_gb
            )
            before = [mem[(impl, b)]["rss"]["before_bytes"] for b, _ in pts]
            p(f"- {impl}: fixed part {fixed / GB:.2f} GB, slope {slope / GB:.2f} GB per latent "
              f"(largest residual of the line {resid / GB:.2f} GB; RSS before the iteration "
              f"{min(before) / GB:.2f}-{max(before) / GB:.2f} GB); derived largest --batch ({largest}; GB = 1e9 bytes; "
              f"derived from the line, not measured).")
        p("")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
