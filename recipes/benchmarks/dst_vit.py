"""Dynamic sparse training of a small Vision Transformer on CIFAR-10 (cifar10-jpeg), side by side.

The same ``vit_tiny`` (4 pre-norm blocks of 64 channels, 4 heads, 4x4 patches: every weight matrix a
synapse, attention's ``in_proj_weight`` included), the same seed, data order, epochs, AdamW, warmup
and cosine schedule, crop/flip augmentation; only the connectome differs:

- ``dense``: density 1 (every synapse kept);
- ``set``: magnitude drop, random growth (Mocanu et al. 2018);
- ``rigl``: magnitude drop, gradient growth (Evci et al. 2020);
- ``rigl, q/k/v apart``: the same with ``vit_tiny(qkv="separate")``, the same function whose query, key
  and value projections are three synapse layers, each with its own ERK share (RigL's gradient growth
  moves the packed ``in_proj_weight``'s synapses from queries and keys to values: does it cost?);
- ``ours``: the utility policy with the consistency estimator (the former default), and with the
  curvature estimator (OBD's ``F*w^2/2`` alone for removal: no first-order term; the default).

every sparse row at ``--density`` with the ERK layer budget. A second table gives the density of the
query, key and value projections at the end of each sparse run. Each row is one run of
``recipes/adaptive.py`` (its ``summary.json`` gives the numbers: test accuracy read once at the end,
held-out accuracy on 10% of TRAIN). Runs already finished under ``--runs`` are reused. Writes
``recipes/benchmarks/results/dst_vit.md``.

    python recipes/benchmarks/dst_vit.py                 # about 40 minutes on 2 cores (six runs)
    python recipes/benchmarks/dst_vit.py --epochs 1      # a quick look
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from adaptive.cli import data_dir_type, path_type  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive import jsonio  # noqa: E402
from recipes.benchmarks._reproduce import command  # noqa: E402


# settings that do not change what a run computes: a finished run of other ones is reused all the same
_SHOWN_ONLY = {"output_dir", "data_dir", "threads", "progress", "figures", "num_workers", "plugins", "log_every",
               "keep_checkpoints", "checkpoint_every", "download", "resume", "overwrite"}


def _command(extra: list, args, out: Path) -> list:
    """recipes/adaptive.py's arguments for one row (``extra``: its policy, density and options)."""
    cmd = ["--model", "vit_tiny", "--dataset", "cifar10", "--epochs", str(args.epochs), "--optimizer", "adamw", "--lr",
           str(args.lr), "--weight-decay", "0.05", "--warmup-steps", "200", "--augment", "true", "--seed",
           str(args.seed), "--threads", str(args.threads), "--budget", "erk", "--output_dir", str(out),
           "--no-progress"] + list(extra)
    if getattr(args, "data_dir", None):
        cmd += ["--data-dir", args.data_dir]
    return cmd


def _other_settings(recorded: dict, cmd: list) -> dict:
    """The settings a finished run recorded (its config.yaml) that differ from the ones ``cmd`` would run
    with, as ``{key: (there, here)}``, compared for every key the run recorded that changes what it
    computes (:data:`_SHOWN_ONLY` aside): lr, density, epochs and seed alone were compared, so a run of
    another estimator, --model-kw or --controller_kw was reused as this row."""
    from adaptive.config import to_dict
    from recipes._adaptive.config import parse_args

    want = to_dict(parse_args(cmd))
    def same(a, b):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return float(a) == float(b)
        return a == b

    return {k: (recorded.get(k), v) for k, v in want.items()
            if k not in _SHOWN_ONLY and k in recorded and not same(recorded.get(k), v)}


def run(name: str, extra: list, args) -> dict:
    out = Path(args.runs) / f"{name}_e{args.epochs}_s{args.seed}"
    summary = out / "summary.json"
    cmd = _command(extra, argparse.Namespace(**{"threads": 1, **vars(args)}), out)
    if summary.exists():  # reuse a finished run only if it ran with these settings
        from adaptive.yaml_read import load_yaml

        cfg = load_yaml((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
        want = {"lr": args.lr, "density": float(extra[extra.index("--density") + 1]), "epochs": args.epochs,
                "seed": args.seed}
        diff = {k: (cfg.get(k), v) for k, v in want.items() if cfg.get(k) is None or float(cfg[k]) != float(v)}
        diff.update({k: ab for k, ab in _other_settings(cfg, cmd).items() if k not in diff})
        if diff:
            sys.exit(f"error: {out} holds a finished {name} run with other settings "
                     f"({', '.join(f'{k}: {a} there, {b} here' for k, (a, b) in diff.items())}); pass --runs DIR "
                     "for a folder of runs with these settings")
        print(f"reusing the finished run {out}", flush=True)
    else:
        cmd = [sys.executable, str(ROOT / "recipes" / "adaptive.py")] + cmd
        print("running:", " ".join(cmd[1:]), flush=True)
        t0 = time.time()
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"error: the {name} run failed (its output is above); nothing was written to the table")
        print(f"  {name}: {(time.time() - t0) / 60:.1f} min", flush=True)
    return jsonio.loads(summary.read_text())


def projection_density(run_dir: Path, separate: bool) -> dict:
    """Per block, the fraction of live synapses in the query, key and value projections of a run."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import adaptive
    from adaptive.models import build_model

    conn = adaptive.Connectome.load(run_dir / "connectome.safetensors",
                                    build_model("vit_tiny", qkv="separate" if separate else "packed"))
    out = {"q": [], "k": [], "v": []}
    for name, m in conn.masks.items():
        if name.endswith("in_proj_weight"):
            for key, part in zip("qkv", m.chunk(3, 0)):
                out[key].append(part.float().mean().item())
        elif name.endswith(("q_proj_weight", "k_proj_weight", "v_proj_weight")):
            out[name.rsplit(".", 1)[-1][0]].append(m.float().mean().item())
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--epochs", type=int, default=8, help="passes over the train part (default 8)")
    p.add_argument("--density", type=float, default=0.2, help="density of the sparse rows (default 0.2)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=data_dir_type, default=None, help="data folder (else $ADAPTIVE_DATA, ../shared/data)")
    p.add_argument("--runs", type=path_type(), default=str(ROOT / "runs" / "benchmarks" / "dst_vit"), help="where the runs go")
    p.add_argument("--out", type=path_type(), default=str(HERE / "results" / "dst_vit.md"), help="the table")
    args = p.parse_args(argv)
    if not 0.0 < args.density < 1.0:
        p.error(f"--density must be in (0, 1) for the sparse rows, got {args.density}")
    if args.epochs < 1 or args.lr <= 0:
        p.error("--epochs must be at least 1 and --lr positive")
    rows = [("dense", ["--density", "1.0", "--policy", "rigl"]),
            ("set", ["--density", str(args.density), "--policy", "set"]),
            ("rigl", ["--density", str(args.density), "--policy", "rigl"]),
            ("rigl_qkv", ["--density", str(args.density), "--policy", "rigl", "--model-kw", "{qkv: separate}"]),
            ("utility", ["--density", str(args.density), "--policy", "utility", "--estimator", "consistency"]),
            ("utility_curvature", ["--density", str(args.density), "--policy", "utility", "--estimator", "curvature"])]
    labels = {"rigl_qkv": "rigl, q/k/v apart", "utility": "ours (utility/consistency, the former default)",
              "utility_curvature": "ours (utility/curvature, the default)"}
    results = [(name, run(name, extra, args)) for name, extra in rows]

    def pick(s, *keys):
        for k in keys:
            if s.get(k) is not None:
                return s[k]
        return float("nan")

    lines = ["# Dynamic sparse training of vit_tiny on CIFAR-10 (cifar10-jpeg)", "",
             "| method | density | live synapses | test acc % | held-out acc % | wall min |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, s in results:
        lines.append(f"| {labels.get(name, name)} | {pick(s, 'density'):.3f} | {pick(s, 'live_synapses', 'live'):,} | "
                     f"{fmt_accuracy(pick(s, 'test_accuracy'))} | {fmt_accuracy(pick(s, 'holdout_accuracy'))} | "
                     f"{pick(s, 'wall_seconds', 'seconds') / 60:.1f} |")
    total = results[0][1].get("synapses", float("nan"))
    lines += ["", f"vit_tiny: {total:,} synapses (every weight matrix; attention in_proj_weight included). "
              f"{args.epochs} epochs, AdamW lr {args.lr} weight decay 0.05, 200 warmup steps then cosine, crop/flip, "
              f"seed {args.seed}; sparse rows at density {args.density} with the ERK budget, RigL's update schedule "
              f"(recipes/adaptive.py defaults). Test = the cifar10-jpeg test split, read once per run for this table; "
              f"held-out = 10% of TRAIN. {platform.machine()}, {args.threads} thread(s).", "",
              "Density of the attention projections at the end (mean over the blocks, min-max in brackets):", "",
              "| method | queries | keys | values |", "|---|---:|---:|---:|"]
    for name, _ in results[1:]:
        d = projection_density(Path(args.runs) / f"{name}_e{args.epochs}_s{args.seed}", name == "rigl_qkv")
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(
            f"{sum(v) / len(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in (d["q"], d["k"], d["v"])) + " |")
    lines += ["",
              f"Reproduce: `{command('dst_vit.py', ROOT, argv, placed=('--out',), dropped=('--runs', '--data-dir'))}`"]
    text = "\n".join(lines) + "\n"
    from adaptive.atomic import write_text

    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
