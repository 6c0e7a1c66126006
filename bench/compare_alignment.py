#!/usr/bin/env python3
"""Times Rust (examples/bench_alignment.rs) against PyTorch (bench/torch_alignment.py) in lockstep.

Both are started once with --serve and load the same UNet folder; then, for each round and each mode, one
repetition runs in one process while the other waits, then one in the other (which goes first alternates by
round). On a shared machine whose load drifts, each Rust/PyTorch pair sees nearly the same load, so the ratio of
a pair is far steadier than a ratio of separately timed processes.

    python3 bench/compare_alignment.py --rust-bin target/release/examples/bench_alignment --unet DIR \\
        (or --transformer DIR)
        [--rounds 3] [--warmup 1] [--threads N] [--modes ...] >> results.jsonl

Writes JSON lines to stdout: one "ready" line per implementation, one "pair" line per mode and round
(both wall and CPU seconds), and progress to stderr.
"""
import argparse
import json
import os
import subprocess
import sys
import time

MODES = ("enc_fwd", "enc_fwd_bwd", "full_fwd", "full_fwd_bwd")


class Server:
    def __init__(self, name, cmd):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self._read()
        if not self.ready.get("ready"):
            raise RuntimeError(f"{name} did not start: {self.ready}")

    def _read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited (status {self.proc.poll()})")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=120)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rust-bin", required=True)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--unet")
    which.add_argument("--transformer", help="a DiT transformer folder, instead of --unet")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    modes = args.modes.split(",")
    network = ["--unet", args.unet] if args.unet else ["--transformer", args.transformer]
    common = [*network, "--threads", str(args.threads), "--batch", str(args.batch)]
    here = os.path.dirname(os.path.abspath(__file__))
    # Loaded one after the other, so the two loads do not compete.
    servers = {"rust": Server("rust", [args.rust_bin, "--serve", *common])}
    servers["pytorch"] = Server("pytorch", [sys.executable, os.path.join(here, "torch_alignment.py"), "--serve", *common])
    for impl, s in servers.items():
        print(json.dumps({"role": "ready", **s.ready}), flush=True)
    try:
        for w in range(args.warmup):
            for m in modes:
                for impl in ("rust", "pytorch"):
                    servers[impl].ask(m)
            print(f"[compare] warm-up {w + 1} done, load {loadavg()}", file=sys.stderr, flush=True)
        for r in range(1, args.rounds + 1):
            order = ("rust", "pytorch") if r % 2 == 1 else ("pytorch", "rust")
            for m in modes:
                load_before = loadavg()
                res = {impl: servers[impl].ask(m) for impl in order}
                rec = {
                    "role": "pair",
                    "round": r,
                    "mode": m,
                    "first": order[0],
                    "rust": res["rust"],
                    "pytorch": res["pytorch"],
                    "loadavg": load_before,
                }
                print(json.dumps(rec), flush=True)
                print(
                    f"[compare] round {r} {m}: rust {res['rust']['wall']:.2f}s pytorch {res['pytorch']['wall']:.2f}s "
                    f"ratio {res['rust']['wall'] / res['pytorch']['wall']:.3f} (load {load_before[0]:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
        for impl, s in servers.items():
            print(json.dumps({"role": "rss", "impl": impl, **s.ask("rss")}), flush=True)
    finally:
        for s in servers.values():
            s.close()


if __name__ == "__main__":
    main()
