"""What a finished run leaves: the final test evaluation, the files of the run folder
(metrics.csv, events.jsonl, the connectome, the dense state_dict, figures), summary.json and the
closing lines, and :class:`RunResult` for the caller."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from adaptive import Connectome, Controller, jsonio
from adaptive.atomic import atomic_torch_save, write_text
from adaptive.cli import counted, show_progress
from adaptive.data import test_images, test_split_size
from adaptive.metrics import fmt_accuracy, fmt_unsaturated
from adaptive.training import TrainState, evaluate, write_metrics_csv

from .folder import main_writes
from .precision import _inert_fp16


@dataclass
class RunResult:
    """What :func:`recipes._adaptive.train.training_function` returns (for tests and notebooks)."""

    output_dir: Path
    model: Any
    conn: Connectome
    controller: Optional[Controller]
    state: TrainState
    summary: Dict[str, Any]
    files: Dict[str, Path]


def _test_eval(cfg, accelerator, model, test_dl):
    """The final evaluation on the test split, with a bar as --progress says."""
    from tqdm.auto import tqdm

    with tqdm(total=None, desc="test", unit="batch", leave=False, mininterval=1.0,  # evaluate sets the total
              disable=not (show_progress(cfg.progress) and accelerator.is_local_main_process)) as bar:
        return evaluate(accelerator, model, test_dl, progress=bar)


def _test_split_size(loaders, n_test: int, test_subset: Optional[int]) -> int:
    """summary.json's test_split_examples: the whole test split's size, more than the ``n_test``
    scored where --test_subset drew fewer."""
    return test_split_size(loaders.datasets.test if test_subset is not None else None, n_test)


def _split_labels(loaders, n_test: int, train: str, test_subset: Optional[int] = None) -> Dict[str, str]:
    """What fed each split's line in loss_accuracy.png: the held-out part is drawn from TRAIN, and
    the test line says how many test images it scored (of how many, when --test_subset drew fewer)."""
    n_holdout = len(loaders.datasets.holdout)
    test = test_images(loaders.datasets.test if test_subset is not None else None, n_test)
    return {"train": train, "holdout": f"held-out ({n_holdout:,} images of TRAIN)", "test": f"test ({test})"}


def _write_outputs(accelerator, cfg, output_dir: Path, rows, events,
                   labels: Optional[Dict[str, str]] = None, kept: Optional[dict] = None) -> Dict[str, Path]:
    files = {"config": output_dir / "config.yaml", "metrics": output_dir / "metrics.csv",
             "events": output_dir / "events.jsonl", "connectome": output_dir / "connectome.safetensors",
             "dense_state_dict": output_dir / "dense_state_dict.pt"}

    def write():  # (the connectome and the dense state_dict: written before the test split was read, _save_trained)
        write_metrics_csv(rows, files["metrics"])
        write_text(files["events"], jsonio.dumps_lines(events))
        if cfg.figures:
            from adaptive.plots import plot_run, run_title

            title = run_title(cfg.model, cfg.dataset, output_dir, what=f"{cfg.mode}: " if cfg.mode != "train" else "")
            files.update(plot_run(rows, events, output_dir, labels, kept, title=title,
                                  max_grad_norm=cfg.max_grad_norm))

    # the main process writes; a failure (a full disk) stops every process with its error (and is the barrier)
    main_writes(accelerator, f"the run's outputs into {output_dir}", write)
    return files


def _save_trained(accelerator, output_dir: Path, conn) -> None:
    """The connectome and the dense state_dict, written before the test split is first read for the report
    (:func:`_write_outputs` writes the rest after it, and lists these among the run's files): a test split that
    fails only then (a test image cut short, or of another size than the first, decoded for the first time
    there) left a run of hours with config.yaml and metrics.csv alone."""
    def write():
        conn.save(output_dir / "connectome.safetensors", with_original=conn.mode == "mask_only")
        atomic_torch_save(conn.dense_state_dict(device="cpu"), output_dir / "dense_state_dict.pt")  # any machine loads it

    main_writes(accelerator, f"the trained connectome into {output_dir}", write)


def _end(accelerator) -> None:
    """Leave the process group together: a rank that tears down its group while another is still
    writing can take the rendezvous store with it and abort the other at exit."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _row_lr(state, optimizer) -> float:
    """A held-out or test row's ``lr``: the last trained step's, or the first step's before any."""
    return state.lr if state.lr is not None else float(optimizer.param_groups[0]["lr"])


def _nonzero(conn) -> int:
    """Live synapses whose weight is not exactly 0.0 (a pruned one is 0.0, or NaN after a run
    diverged, and is not counted): fewer than the live ones where a live synapse holds 0.0
    (regrown at zero and not yet moved, or reading an input that is always 0)."""
    return sum(int(torch.count_nonzero(p.detach()[conn.masks[n].to(p.device)])) for n, p in conn.params.items())


def _finish(accelerator, output_dir, summary, files):
    # every forward pass of the run, the held-out and test evaluations included, ran at this precision:
    # what Accelerate's autocast ran, not the setting (fp16 on a CPU runs none: refused by training_function)
    summary["mixed_precision"] = mp = "no" if _inert_fp16(accelerator) else str(accelerator.mixed_precision)
    main_writes(accelerator, f"summary.json into {output_dir}",
                lambda: write_text(output_dir / "summary.json", jsonio.dumps(summary, indent=1)))
    if accelerator.is_main_process:
        files["summary"] = output_dir / "summary.json"
        ho = summary.get("holdout_accuracy")
        zero_live = summary["live"] - summary["nonzero"]
        n_test = summary["test_examples"]
        whole = summary.get("test_split_examples", n_test)
        test = f"a stratified draw of {whole:,}: --test_subset" if whole > n_test else "the whole test split"
        print(
            f"\ndone in {summary['seconds']:.0f}s: test accuracy {fmt_accuracy(summary['test_accuracy'])}% on "
            f"{n_test:,} test images ({test}; held-out part of TRAIN {'n/a' if ho is None else f'{fmt_accuracy(ho)}%'}), "
            # (a density short of 1 or above 0 keeps the digits that say so: "1.0000" read as dense)
            f"density {fmt_unsaturated(summary['density'], '.4f', (0.0, 1.0))} ({summary['live']:,} of "
            f"{summary['synapses']:,} synapses live"
            + (f", {zero_live:,} of them holding exactly 0.0" if zero_live else "")
            + f"), {counted(summary['updates'], 'controller update')}"
            + (f"; every figure measured under {mp} autocast (--mixed_precision), so a float32 evaluation of "
               "dense_state_dict.pt differs in the last digits" if mp != "no" else "") + "\n"
            f"outputs in {output_dir}/: " + ", ".join(sorted(p.name for p in files.values())),
            flush=True,
        )
        for key in ("density_note", "update_note", "batch_note", "seconds_note"):
            if summary.get(key):
                print(f"note: {summary[key]}", flush=True)
