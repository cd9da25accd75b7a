#!/usr/bin/env python3
"""convnet and PyTorch side by side, on the same machine, in one run.

For each preset (or --spec file) this builds PyTorch's equivalent of the model from the
same TOML (conv2d, batch norm, relu/sigmoid/tanh, max/avg pool, flatten, dropout, linear),
times a training step (forward, softmax cross-entropy, backward, SGD with momentum 0.9 and
weight decay 5e-4) and an evaluation pass on random batches, with PyTorch's default layout
and with channels_last, and runs `convnet bench` on the same model, batch and thread
count. The two are measured in alternating rounds and the best of each is kept (the host
may be shared; the best round is the least disturbed). It prints one Markdown table with
the ratios, against the faster PyTorch layout, and the CPU it ran on: the ratio of the
bests, and the median of each round's own ratio (convnet and PyTorch measured minutes
apart in the same round, so a quiet or busy phase of a shared host moves both).

    python3 scripts/vs-pytorch.py                  # seed-cnn at 100, cnn-plus at 128
    python3 scripts/vs-pytorch.py --rounds 5 --preset cnn-plus:128
    python3 scripts/vs-pytorch.py --spec my-model.toml:64

Without torch importable it still runs convnet and says how to get PyTorch (a venv outside
the repository: `python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch`).
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ["seed-cnn:100", "cnn-plus:128"]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        else:
            name = platform.processor() or "unknown CPU"
        flags = open("/proc/cpuinfo").read()
        isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
        model = re.search(r"^model\s*:\s*(\d+)", flags, re.M)
        family = re.search(r"^cpu family\s*:\s*(\d+)", flags, re.M)
        ident = f", family {family.group(1)} model {model.group(1)}" if model and family else ""
        return f"{name} ({isa}{ident}, {os.cpu_count()} logical CPUs)"
    except OSError:
        return platform.processor() or "unknown CPU"


def spec_path(model):
    """A preset name or a TOML file."""
    p = Path(model)
    if p.suffix == ".toml" and p.exists():
        return p
    preset = ROOT / "presets" / f"{model}.toml"
    if preset.exists():
        return preset
    sys.exit(f"error: {model}: neither a preset in {ROOT / 'presets'} nor a .toml file")


def torch_model(spec, nn):
    """PyTorch's equivalent of a convnet model spec (the layer types convnet knows)."""
    c, h, w = spec["input"]
    shape = (c, h, w)
    layers = []
    for l in spec["layers"]:
        t = l["type"]
        if t == "conv2d":
            k, s, p = l.get("kernel", 3), l.get("stride", 1), l.get("pad", 0)
            layers.append(nn.Conv2d(shape[0], l["out_channels"], k, stride=s, padding=p))
            shape = (l["out_channels"], (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
        elif t in ("max_pool2d", "avg_pool2d"):
            k = l.get("kernel", 2)
            s = l.get("stride", k)
            cls = nn.MaxPool2d if t == "max_pool2d" else nn.AvgPool2d
            layers.append(cls(k, stride=s))
            shape = (shape[0], (shape[1] - k) // s + 1, (shape[2] - k) // s + 1)
        elif t in ("batch_norm2d", "batch_norm1d"):
            cls = nn.BatchNorm2d if t == "batch_norm2d" else nn.BatchNorm1d
            layers.append(cls(shape[0], eps=l.get("eps", 1e-5), momentum=l.get("momentum", 0.1)))
        elif t == "relu":
            layers.append(nn.ReLU())
        elif t == "sigmoid":
            layers.append(nn.Sigmoid())
        elif t == "tanh":
            layers.append(nn.Tanh())
        elif t == "flatten":
            layers.append(nn.Flatten())
            n = 1
            for d in shape:
                n *= d
            shape = (n,)
        elif t == "dropout":
            layers.append(nn.Dropout(l.get("p", 0.5)))
        elif t == "linear":
            layers.append(nn.Linear(shape[0], l["out_features"]))
            shape = (l["out_features"],)
        else:
            sys.exit(f"error: layer type {t!r} has no PyTorch equivalent in this script")
    return nn.Sequential(*layers), (c, h, w)


def best_rate(step, seconds, windows=5):
    """Calls/s of the best of `windows` equal windows after a warm-up (like convnet bench)."""
    for _ in range(3):
        step()
    best = 0.0
    for _ in range(windows):
        start, calls = time.perf_counter(), 0
        while calls < 2 or time.perf_counter() - start < seconds / windows:
            step()
            calls += 1
        best = max(best, calls / (time.perf_counter() - start))
    return best


def pytorch_round(torch, spec, batch, threads, seconds):
    """{layout: (train images/s, eval images/s)} for the default layout and channels_last."""
    nn = torch.nn
    torch.set_num_threads(threads)
    out = {}
    for layout in ("default", "channels_last"):
        torch.manual_seed(0)
        model, input_shape = torch_model(spec, nn)
        x = torch.randn(batch, *input_shape)
        classes = spec["layers"][-1]["out_features"]
        y = torch.randint(0, classes, (batch,))
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss()
        model.train()

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        train = best_rate(train_step, seconds) * batch
        model.eval()
        with torch.no_grad():
            evaluate = best_rate(lambda: model(x), seconds) * batch
        out[layout] = (train, evaluate)
    return out


def convnet_round(binary, model, batch, threads, seconds):
    """(train images/s, eval images/s, FMA peak GFLOP/s or None, train share of the peak)."""
    which = ["--spec", str(model)] if str(model).endswith(".toml") else ["--preset", str(model)]
    cmd = [str(binary), "bench", *which, "--batch-size", str(batch),
           "--eval-batch-size", str(batch), "--threads", str(threads), "--seconds", str(seconds)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    train = float(re.search(r"^train batch\s+\d+:\s+([\d.]+) images/s", text, re.M).group(1))
    evaluate = float(re.search(r"^eval batch \d+: ([\d.]+) images/s", text, re.M).group(1))
    peak = re.search(r"^FMA peak .*?: ([\d.]+) GFLOP/s.*training ([\d.]+)%", text, re.M)
    return train, evaluate, (float(peak.group(1)) if peak else None), (float(peak.group(2)) if peak else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", action="append", metavar="NAME:BATCH",
                    help="a preset and its batch size (repeatable); default seed-cnn:100 and cnn-plus:128")
    ap.add_argument("--spec", action="append", metavar="FILE.toml:BATCH", help="a model spec and its batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--convnet", default=str(ROOT / "target" / "release" / "convnet"))
    args = ap.parse_args()

    models = (args.preset or []) + (args.spec or []) or DEFAULT_MODELS
    binary = Path(args.convnet)
    if not binary.exists():
        sys.exit(f"error: {binary} not found: run `cargo build --release` first (or give --convnet)")
    try:
        import warnings

        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch, torch_version = None, None
        print("torch is not importable: measuring convnet alone. For the side-by-side numbers:\n"
              "  python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch\n"
              "  ~/torchvenv/bin/python scripts/vs-pytorch.py\n", file=sys.stderr)

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    print(f"CPU: {cpu_name()}")
    print(f"convnet {commit}, PyTorch {torch_version or '(not installed)'}, {args.threads} threads, "
          f"best of {args.rounds} alternating rounds, {args.seconds:g} s per measurement, "
          f"{time.strftime('%Y-%m-%d')}\n")
    rows = []
    for item in models:
        name, _, batch = item.rpartition(":")
        if not name or not batch.isdigit():
            sys.exit(f"error: {item!r}: expected NAME:BATCH, e.g. cnn-plus:128")
        batch = int(batch)
        path = spec_path(name)
        spec = tomllib.loads(path.read_text())
        best = {"convnet": [0, 0], "default": [0, 0], "channels_last": [0, 0]}
        ratios = []
        peak, share = None, None
        for r in range(args.rounds):
            train, evaluate, p, s = convnet_round(binary, name, batch, args.threads, args.seconds)
            if train > best["convnet"][0]:
                peak, share = p, s
            best["convnet"] = [max(best["convnet"][0], train), max(best["convnet"][1], evaluate)]
            line = f"  round {r + 1}/{args.rounds} {name}: convnet {train:,.0f}/{evaluate:,.0f}"
            if torch:
                this = pytorch_round(torch, spec, batch, args.threads, args.seconds)
                for layout, (t, e) in this.items():
                    best[layout] = [max(best[layout][0], t), max(best[layout][1], e)]
                pt = [max(t for t, _ in this.values()), max(e for _, e in this.values())]
                ratios.append((train / pt[0], evaluate / pt[1]))
                line += (f", PyTorch {this['default'][0]:,.0f}/{this['default'][1]:,.0f} (default), "
                         f"{this['channels_last'][0]:,.0f}/{this['channels_last'][1]:,.0f} (channels_last); "
                         f"this round {ratios[-1][0]:.2f}x/{ratios[-1][1]:.2f}x")
            print(line + " train/eval images/s", file=sys.stderr, flush=True)
        rows.append((spec.get("name", name), batch, best, peak, share, ratios))

    print("| model | batch | | training images/s | evaluation images/s |")
    print("|---|---|---|---|---|")
    for name, batch, best, peak, share, ratios in rows:
        c = best["convnet"]
        # convnet bench counts each conv's direct multiply-adds; Winograd layers do fewer.
        share_text = f" ({share:.0f}% of the {peak:.0f} GFLOP/s FMA peak, direct-conv FLOPs)" if peak else ""
        print(f"| {name} | {batch} | convnet | {c[0]:,.0f}{share_text} | {c[1]:,.0f} |")
        if torch:
            for layout in ("default", "channels_last"):
                t, e = best[layout]
                print(f"| | | PyTorch, {layout.replace('_', ' ')} | {t:,.0f} | {e:,.0f} |")
            pt_train = max(best["default"][0], best["channels_last"][0])
            pt_eval = max(best["default"][1], best["channels_last"][1])
            print(f"| | | **convnet / faster PyTorch** | **{c[0] / pt_train:.2f}x** | **{c[1] / pt_eval:.2f}x** |")
            median = [statistics.median(r[i] for r in ratios) for i in (0, 1)]
            print(f"| | | median of the {len(ratios)} rounds' own ratios | {median[0]:.2f}x | {median[1]:.2f}x |")


if __name__ == "__main__":
    main()
