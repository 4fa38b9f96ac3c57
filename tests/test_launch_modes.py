"""The launch modes `accelerate launch` offers beyond --multi_gpu: FSDP (refused: it shards the weights the
connectome masks whole, and on a CPU Accelerate silently runs DDP), and the ones that run (--mixed_precision
bf16, --dynamo_backend, an `accelerate config` file) checked for being applied, for the invariants and for an
exact resume."""
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ports import launch_two  # noqa: E402
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, reset_accelerate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "adaptive.py"
TINY = ["--max_steps", "20", "--update_every", "10", "--log_every", "5", "--threads", "1", "--progress", "false",
        "--figures", "false"]
P = load_script("recipes/prune_pretrained.py", "recipe_prune_pretrained_launch_modes")
ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)  # a fresh Accelerator per in-process run
PRUNE_TINY = ["--model", "resnet20", "--dataset", "fake", "--dataset-kw", "shape=[3,8,8]", "--subset", "64",
              "--batch-size", "32", "--remove", "10", "--no-progress", "--cpu", "--threads", "1"]

# the part of an `accelerate config` file both launches below share: one machine, two processes
ONE_MACHINE_TWO_PROCESSES = """machine_rank: 0
main_training_function: main
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"""
FSDP_CONFIG = """compute_environment: LOCAL_MACHINE
debug: false
distributed_type: FSDP
downcast_bf16: 'no'
enable_cpu_affinity: false
fsdp_config:
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_cpu_ram_efficient_loading: true
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_version: 2
mixed_precision: 'no'
""" + ONE_MACHINE_TWO_PROCESSES


@pytest.mark.parametrize("how", ["fsdp1", "fsdp2_config_file"])
def test_an_fsdp_launch_is_refused_before_anything_is_written(tmp_path, how):
    """FSDP2 ran as plain DDP on the CPU (Accelerate shards nothing there) while the user asked for FSDP, and on a GPU
    its DTensor shards cannot take a whole weight's mask; FSDP1 stopped inside Accelerate with a traceback from each
    process. Both are refused, with one line naming FSDP and the launch to use, before the run folder is made."""
    if how == "fsdp1":  # (accelerate launch's defaults: sync_module_states and cpu_ram_efficient_loading on)
        mode = ("--use_fsdp",)  # FSDP1: the default of every accelerate; 1.1 has no --fsdp_version
    else:  # a config file as `accelerate config` writes it for FSDP2
        (tmp_path / "fsdp.yaml").write_text(FSDP_CONFIG)
        mode = ("--config_file", tmp_path / "fsdp.yaml")
    out = tmp_path / "run"
    r = launch_two([SCRIPT, *TINY, "--output_dir", out], env=ENV, mode=mode)
    text = r.stdout + r.stderr
    assert r.returncode != 0, text[-3000:]
    assert text.count("recipes/adaptive.py: error: FSDP (accelerate launch --use_fsdp, or distributed_type: FSDP") == 1, \
        text[-3000:]
    assert "Launch with accelerate launch --multi_gpu --num_processes N recipes/adaptive.py" in text
    assert "[rank0]: Traceback" not in text and "[rank1]: Traceback" not in text, text[-3000:]
    assert not out.exists()


def test_prune_pretrained_refuses_fsdp_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch --use_fsdp sets
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        P.command([*PRUNE_TINY, "--output_dir", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "recipes/prune_pretrained.py: error: FSDP (accelerate launch --use_fsdp" in err and "Traceback" not in err
    assert "accelerate launch --multi_gpu --num_processes N recipes/prune_pretrained.py" in err
    assert not out.exists()


# as `accelerate config` writes a one-machine, two-process run with bf16 and a dynamo backend (MULTI_GPU: on a
# machine without GPUs it runs on the CPUs, with gloo; its MULTI_CPU config starts one process without mpirun)
MODES_CONFIG = """compute_environment: LOCAL_MACHINE
debug: false
distributed_type: MULTI_GPU
downcast_bf16: 'no'
dynamo_config:
  dynamo_backend: EAGER
enable_cpu_affinity: false
gpu_ids: all
mixed_precision: bf16
""" + ONE_MACHINE_TWO_PROCESSES


def test_a_config_file_with_bf16_and_dynamo_is_applied_keeps_the_invariants_and_resumes_exactly(tmp_path):
    """A launch from an `accelerate config` file of two processes, bf16 and a dynamo backend: the model is compiled,
    the forward runs under bf16 autocast, pruned weights are exactly 0.0 after every step, both processes end with
    the same masks, a run resumed from its step-10 checkpoint ends with the whole run's masks and weights, and the
    outputs load into a plain model (no wrapper's key prefix)."""
    (tmp_path / "modes.yaml").write_text(MODES_CONFIG)
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    rec = {}
    for stage in ("whole", "resumed"):
        r = launch_two([ROOT / "tests" / "scripts" / "launched_recipe_modes.py", tmp_path, stage, *TINY], env=env,
                       mode=("--config_file", tmp_path / "modes.yaml"), settings=())
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        rec[stage] = [json.loads((tmp_path / f"{stage}{k}.json").read_text()) for k in range(2)]
    for one in rec["whole"] + rec["resumed"]:
        assert one["compiled"] and one["autocast"] and one["dtype"] == "torch.bfloat16", one
        assert one["mixed_precision"] == "bf16" and one["pruned_nonzero"] == 0, one
        assert one["mask_hash"] == rec["whole"][0]["mask_hash"], rec
    assert [one["steps"] for one in rec["whole"] + rec["resumed"]] == [20, 20, 10, 10], rec
    done = rec["resumed"][0]
    assert done["resumed_weights_equal"] and done["plain_pruned_nonzero"] == 0, done
    assert done["plain_load_mask_hash"] == done["mask_hash"], done


def test_prune_pretrained_runs_the_precision_accelerate_launch_gives(tmp_path, monkeypatch, capsys):
    """`accelerate launch --mixed_precision bf16 recipes/prune_pretrained.py` ran float32 and said so ("mixed precision
    no"): the recipe's default "no", handed to the Accelerator, overrode the launch's. Now the launch's precision runs
    and is recorded where neither the recipe's option nor its --config file gives one; fp16, which the recipe does not
    run, is refused before anything is written; the recipe's own option still wins."""
    import yaml

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what accelerate launch --mixed_precision bf16 sets
    P.main([*PRUNE_TINY, "--output_dir", str(tmp_path / "bf16")])
    assert "(cpu, mixed precision bf16; every figure here was measured under bf16 autocast" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "bf16" / "config.yaml").read_text())["mixed_precision"] == "bf16"
    reset_accelerate()  # (another precision: a fresh Accelerator state, as a new process has)
    P.main([*PRUNE_TINY, "--output_dir", str(tmp_path / "no"), "--mixed_precision", "no"])
    assert "(cpu, mixed precision no)" in capsys.readouterr().out
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(SystemExit) as e:
        P.command([*PRUNE_TINY, "--output_dir", str(tmp_path / "fp16")])
    assert e.value.code == 2 and not (tmp_path / "fp16").exists()
    assert ("recipes/prune_pretrained.py: error: mixed precision fp16 (from accelerate launch or its config) is not one "
            "recipes/prune_pretrained.py runs: launch with --mixed_precision bf16 or no") in capsys.readouterr().err


def test_a_dynamo_backend_a_mask_only_run_does_not_apply_is_warned(tmp_path, monkeypatch, capsys):
    """Mask-only runs hand Accelerate the data loaders, never the model, so `accelerate launch --dynamo_backend`
    compiled nothing without a word: both recipes say so, once, and run on."""
    R = load_script("recipes/adaptive.py", "recipe_adaptive_launch_modes_test")
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")  # what accelerate launch --dynamo_backend eager sets
    R.main([*TINY, "--mode", "mask_only", "--target", "0.3", "--output_dir", str(tmp_path / "a")])
    said = ("warning: --dynamo_backend eager (from accelerate launch or its config) is not applied: {} in mask-only "
            "mode does not prepare (or compile) the model; the run continues uncompiled")
    assert capsys.readouterr().out.count(said.format("recipes/adaptive.py")) == 1
    reset_accelerate()
    P.main([*PRUNE_TINY, "--output_dir", str(tmp_path / "p")])
    assert capsys.readouterr().out.count(said.format("recipes/prune_pretrained.py")) == 1


def test_the_lone_process_warning_reads_the_process_count_of_the_launchs_config_file(tmp_path, monkeypatch):
    """`accelerate launch --config_file F` of a `distributed_type: MULTI_CPU` file for two processes (as `accelerate
    config` writes it, without mpirun) starts one: the warning said "asked for several processes" and "--num_processes
    N"; it reads the file's count now, as Accelerate reads the file."""
    from adaptive import distributed

    (tmp_path / "cpu.yaml").write_text(MODES_CONFIG.replace("MULTI_GPU", "MULTI_CPU").replace("use_cpu: false",
                                                                                          "use_cpu: true"))
    launch = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    accelerate = ["python", "-m", "accelerate.commands.launch"]
    views = {"file": (accelerate + ["--config_file", str(tmp_path / "cpu.yaml"), "x.py"], False),
             "file=": (accelerate + [f"--config_file={tmp_path / 'cpu.yaml'}", "x.py"], False),
             "unread": (accelerate + ["--config_file", str(tmp_path / "missing.yaml"), "x.py"], False)}
    monkeypatch.setattr(distributed, "_launcher_view", lambda pid: views[pid])
    for pid in ("file", "file="):
        said = distributed.lone_launched_process_problem("s.py", launch, pid)
        assert "asked for 2 processes" in said and "--multi_gpu --num_processes 2 s.py" in said, said
    assert "asked for several processes" in distributed.lone_launched_process_problem("s.py", launch, "unread")


@pytest.mark.parametrize("flags, refused", [
    ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"), ({"ACCELERATE_USE_FSDP": "TRUE"}, "FSDP"),
    ({"ACCELERATE_USE_FSDP": "false"}, None), ({"ACCELERATE_USE_FSDP": "0"}, None),
    ({"ACCELERATE_USE_FSDP": "1"}, None),  # Accelerate runs no FSDP for it: only "true" turns it on
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "DeepSpeed ZeRO stage 3"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, None),  # (Accelerate's default stage, 2)
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "ds.json": 3},
     "DeepSpeed ZeRO stage 3"),  # the DeepSpeed config file's stage is the one run
    ({"ACCELERATE_USE_DEEPSPEED": "false", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, None)])
def test_a_launch_is_refused_where_accelerate_shards_the_weights_only(tmp_path, monkeypatch, flags, refused):
    """The launch's flags read as Accelerate reads them: ACCELERATE_USE_FSDP=1 (which Accelerate runs as DDP) was
    refused as FSDP; DeepSpeed ZeRO stage 3 (--zero_stage 3, or a --deepspeed_config_file's zero_optimization.stage),
    which partitions each weight as FSDP does, was let through. Stages 0-2 keep whole weights on every process."""
    from adaptive import distributed

    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
              "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in flags.items():
        if k == "ds.json":
            (tmp_path / k).write_text(json.dumps({"zero_optimization": {"stage": v}}))
            monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / k))
        else:
            monkeypatch.setenv(k, v)
    said = distributed.sharded_launch_problem("s.py")
    if refused is None:
        assert said is None, said
    else:
        assert said.startswith(refused) and said.endswith(
            "Launch with accelerate launch --multi_gpu --num_processes N s.py ... (DDP: every process holds the whole "
            "model; on CPUs too, with gloo)"), said


def test_prune_pretrained_refuses_deepspeed_zero_stage_3_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch --use_deepspeed --zero_stage 3 sets
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(SystemExit) as e:
        P.command([*PRUNE_TINY, "--output_dir", str(tmp_path / "run")])
    assert e.value.code == 2 and not (tmp_path / "run").exists()
    err = capsys.readouterr().err
    assert "recipes/prune_pretrained.py: error: DeepSpeed ZeRO stage 3 (accelerate launch --use_deepspeed" in err, err
    assert "Traceback" not in err and "accelerate launch --multi_gpu --num_processes N recipes/prune_pretrained.py" in err


@pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`")  # (one process: nothing to shard)
def test_a_connectome_refuses_a_model_fsdp_shards_naming_data_parallel(tmp_path):
    """Built by the Python API on a model FSDP shards: FSDP2's DTensor weights were taken as whole (set_masks then
    failed in torch: 'mixed torch.Tensor and DTensor'), FSDP1's flat parameters were said to be reparametrised
    (weight_norm) and, with use_orig_params, its 1-D shards (of another shape on each of several processes) were
    silently masked as whole weights; a connectome built whole and then sharded said to build a new one on the
    sharded model. Each is refused, naming the sharding and the data-parallel run to use (a one-process group:
    nothing here depends on the count)."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    from adaptive import Connectome

    fix = ("while a Connectome masks, scores and edits whole weights: build it on the unsharded model and run data "
           "parallel instead, every process holding the whole model (torch's DistributedDataParallel, an Accelerator "
           "without an fsdp_plugin, accelerate launch --multi_gpu)")
    fsdp1, fsdp2 = "FSDP (FullyShardedDataParallel: flat parameters)", "FSDP2 (fully_shard: DTensor shards)"
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        for how, said in (("fully_shard", fsdp2), ("fsdp1", fsdp1), ("fsdp1_orig_params", fsdp1)):
            model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
            if how == "fully_shard":
                fully_shard(model)
            else:
                model = FullyShardedDataParallel(model, device_id=torch.device("cpu"),
                                                 use_orig_params=how == "fsdp1_orig_params")
            with pytest.raises(ValueError) as e:
                Connectome(model)
            assert str(e.value) == f"the model is sharded across processes by {said}, {fix}", how
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        conn = Connectome(model)
        fully_shard(model)  # (as accelerator.prepare does under FSDP, on GPUs)
        with pytest.raises(RuntimeError) as e:
            conn.attach(torch.optim.SGD(model.parameters(), lr=0.1))
        assert str(e.value) == ("the model's parameter(s) ['0.weight', '2.weight'] were replaced by shards since this "
                                f"Connectome was built: the model is sharded across processes by {fsdp2}, {fix}")
    finally:
        dist.destroy_process_group()


def test_prune_pretrained_refuses_a_sharded_launch_before_reading_the_data(tmp_path, monkeypatch, capsys):
    """The refusal came once the data had loaded (minutes of an ImageNet folder scan), when the Accelerator was
    made: here the data is not there at all, and the launch is still what is refused."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SystemExit) as e:
        P.command(["--model", "resnet20", "--dataset", "cifar10", "--data_dir", str(tmp_path / "nowhere"), "--cpu",
                   "--no-progress", "--remove", "10", "--output_dir", str(tmp_path / "run")])
    assert e.value.code == 2 and not (tmp_path / "run").exists()
    assert "recipes/prune_pretrained.py: error: FSDP (accelerate launch --use_fsdp" in capsys.readouterr().err
