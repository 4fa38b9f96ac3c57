"""Run under `accelerate launch` in the mode a test gives (a config file, a precision, a dynamo backend):
recipes/adaptive.py's main, argv[2] ``whole``: a run with a checkpoint at step 10 into argv[1]/a, or
``resumed``: that run resumed from that checkpoint into argv[1]/b; the recipe's options follow argv[2].
Writes ``{whole,resumed}{RANK}.json`` into argv[1]: whether the mode was applied (the prepared model compiled, the
forward under autocast and of which dtype), the pruned weights found nonzero after any step, the run's
final mask hash and (process 0) whether the resumed run's dense_state_dict.pt equals the whole run's, and
whether it and connectome.safetensors load into a plain model of the recipe's."""
import json
import os
import sys

import torch

from _scripts import load_script
from recipes._adaptive import train  # the recipe's module that prepares the model

R = load_script("recipes/adaptive.py", "recipe_adaptive_launch_modes")
seen = {"pruned_nonzero": 0, "steps": 0}
set_up = train._set_up


def probed_set_up(cfg, accelerator, model, *args):
    """The recipe's _set_up, keeping the prepared model and the connectome for the step hook, and a hook on
    the first layer that records the forward's autocast and output dtype."""
    out = set_up(cfg, accelerator, model, *args)
    compiled = isinstance(model, torch._dynamo.eval_frame.OptimizedModule)  # (accelerate 1.1 has no is_compiled_module)
    seen.update(conn=out[4], compiled=compiled, dtype=None, autocast=None)
    layer = next(m for m in accelerator.unwrap_model(model).modules() if isinstance(m, torch.nn.Linear))

    def forward_hook(module, inputs, output):
        seen.update(dtype=str(output.dtype), autocast=torch.is_autocast_enabled("cpu"))
    layer.register_forward_hook(forward_hook)
    return out


def on_step(state):
    """Count the pruned weights that are not exactly 0.0 after this step."""
    conn = seen["conn"]
    seen["steps"] += 1
    seen["pruned_nonzero"] += sum(int(conn.params[k].detach()[~m].ne(0).sum()) for k, m in conn.masks.items())


def main(folder, stage, options):
    train._set_up = probed_set_up
    if stage == "whole":
        res = R.main([*options, "--output_dir", os.path.join(folder, "a"), "--checkpoint_every", "10"], on_step=on_step)
    else:
        res = R.main([*options, "--output_dir", os.path.join(folder, "b"), "--resume",
                      os.path.join(folder, "a", "checkpoints", "step_00000010")], on_step=on_step)
    record = {"compiled": seen["compiled"], "dtype": seen["dtype"], "autocast": seen["autocast"],
              "mask_hash": res.conn.mask_hash(), "mixed_precision": res.summary["mixed_precision"],
              "pruned_nonzero": seen["pruned_nonzero"], "steps": seen["steps"]}
    if stage == "resumed" and int(os.environ.get("RANK", "0")) == 0:
        from adaptive import Connectome
        from adaptive.models import build_model

        a, b = (torch.load(os.path.join(folder, d, "dense_state_dict.pt"), weights_only=True) for d in "ab")
        record["resumed_weights_equal"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        plain = build_model("mlp", num_classes=10, in_shape=(64,))  # the recipe's default model, on digits
        plain.load_state_dict(a)  # strict: the plain model's own keys, no wrapper's prefix
        conn = Connectome.load(os.path.join(folder, "a", "connectome.safetensors"), plain)
        record["plain_load_mask_hash"] = conn.mask_hash()
        record["plain_pruned_nonzero"] = sum(int(conn.params[k].detach()[~m].ne(0).sum()) for k, m in conn.masks.items())
    with open(os.path.join(folder, f"{stage}{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    from adaptive.distributed import exit_launched_process

    main(sys.argv[1], sys.argv[2], sys.argv[3:])
    exit_launched_process()
