"""recipes/_diagnostics/dense_plan.py and memory.py: what dense-gradients says before it starts, and
the malloc setting that keeps its cnn steps from faulting in fresh pages."""
import os
import platform

import pytest
import torch
from _scripts import load_script

from recipes._diagnostics.dense_plan import cnn_forward_macs

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


def test_cnn_forward_macs_counts_every_convolution_of_the_net():
    from adaptive.models import build_model

    model = build_model("densecat", num_classes=10, in_shape=(3, 9, 7), depth=4, width=5, kind="cnn")
    counted = []
    for conv in model.layers:
        conv.register_forward_hook(lambda m, i, o: counted.append(o.numel() * m.in_channels * 9))
    model(torch.zeros(6, 3, 9, 7))
    assert cnn_forward_macs((3, 9, 7), depth=4, width=5, batch_size=6) == sum(counted)


def test_dense_gradients_says_its_plan_then_each_net_before_it_trains(tmp_path, capsys):
    recipe = load_script("recipes/diagnostics.py", "diagnostics_recipe_plan")
    recipe.main(["dense-gradients", "--dataset", "digits", "--batch_size", "32", "--output_dir", str(tmp_path),
                 "--kind", "both", "--batchnorm", "off", "--depth", "2", "--width", "3", "--train_steps", "2",
                 "--grad_batches", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dense-gradients: 2 DenseCat nets (mlp, cnn; depth 2 x width 3), each trained 2 SGD steps "
                             "on batches of 32, then its classifier gradients read over 1 batches")
    macs = (3 * 2 + 1) * cnn_forward_macs((1, 8, 8), 2, 3, 32)
    assert out[1].startswith(f"The cnn nets convolve all 8x8 positions at every layer: about {macs / 1e9:.3g} G ")
    announced = [i for i, line in enumerate(out) if line.startswith("[")]
    results = [i for i, line in enumerate(out) if "median |grad| of the first band / last band" in line]
    assert [out[i].split(":")[0] for i in announced] == ["[1/2] mlp", "[2/2] cnn"]
    assert announced[0] < results[0] < announced[1] < results[1]


MALLOC = """
import os, runpy, sys
import torch
from _scripts import load_script

def given_back():  # MB the process returns to the system when a 256 MB tensor is freed
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    x = torch.ones(64 << 20)
    before = rss()
    del x
    return before - rss()

argv = ["dense-gradients", "--dataset", "digits", "--kind", "mlp", "--batchnorm", "off", "--depth", "2", "--width", "3",
        "--train_steps", "1", "--grad_batches", "1", "--batch_size", "16", "--output_dir", sys.argv[1]]
load_script("recipes/diagnostics.py", "diagnostics_as_a_library").main(argv)
print("library", given_back())
sys.argv = ["recipes/diagnostics.py", *argv, "--overwrite"]
try:
    runpy.run_path("recipes/diagnostics.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("script", given_back())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_kept_where_the_recipe_is_the_process_only(tmp_path):
    """Run as a script, dense-gradients keeps freed memory for reuse; called as a library (main() from
    a test or a notebook) it changed the malloc of the whole process it was called in: every pytest
    worker that ran it held up to 1 GiB of freed memory from then on. (In a subprocess: the setting
    cannot be undone.)"""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]), OMP_NUM_THREADS="1",
               MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-c", MALLOC, str(tmp_path / "out")], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    said = dict(line.split() for line in r.stdout.splitlines() if line.startswith(("library ", "script ")))
    assert int(said["library"]) >= 200 and int(said["script"]) <= 16, said


def test_the_docs_figures_of_the_default_command_are_its_plan_lines():
    """docs/diagnostics.md quotes the multiply-adds and minutes dense-gradients --dataset mnist (its other
    settings the defaults: both kinds, with and without BatchNorm) prints before it trains: they come from that line,
    not from a throwaway measurement."""
    from pathlib import Path

    from recipes._diagnostics.dense_plan import dense_gradients_plan

    recipe = load_script("recipes/diagnostics.py", "diagnostics_recipe_plan_docs")
    args = recipe.build_parser().parse_args(["dense-gradients", "--dataset", "mnist"])
    plan = dense_gradients_plan(args, ["mlp", "cnn"], [False, True], (1, 28, 28))
    docs = " ".join((Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md").read_text().split())
    step = 3 * cnn_forward_macs((1, 28, 28), args.depth, args.width, args.batch_size)
    assert (args.kind, args.batchnorm, args.batch_size) == ("both", "both", 128)
    assert f"about {step / 1e9:.0f} G multiply-adds per training step of 128 MNIST" in docs
    for said in ("about 49.6 T multiply-adds", "17 to 41 minutes on one CPU thread"):
        assert said in plan and said.replace("about ", "") in docs, said
    args = recipe.build_parser().parse_args(["dense-gradients", "--dataset", "mnist", "--layer", "layers.1"])
    plan = dense_gradients_plan(args, ["mlp", "cnn"], [False, True], (1, 28, 28))
    for said in ("about 52.3 T multiply-adds", "17 to 44 minutes"):
        assert said in plan and "`--layer layers.1`" in docs and said in docs.split("`--layer layers.1`")[1][:600], said


@pytest.mark.parametrize("layer, bn", [("classifier", False), ("layers.0", False), ("layers.2", False),
                                       ("layers.1", True), ("layers.1.weight", False)])
def test_a_gradient_read_is_counted_as_what_gradient_by_depth_computes(layer, bn):
    """The plan counted a gradient read as one forward pass whatever --layer was; gradient_by_depth's
    torch.autograd.grad runs the backward as far as the layer, through every later convolution (for layers.0,
    the whole net: a read is then two forwards' worth). cnn_read_macs is the convolutions' multiply-adds
    PyTorch's flop counter finds in one read."""
    from torch.utils.flop_counter import FlopCounterMode

    from adaptive.diagnostics import gradient_by_depth
    from adaptive.models import build_model
    from recipes._diagnostics.dense_plan import cnn_read_macs

    torch.manual_seed(0)
    model = build_model("densecat", num_classes=10, in_shape=(2, 6, 5), depth=4, width=3, kind="cnn", batchnorm=bn)
    batch = [(torch.randn(4, 2, 6, 5), torch.randint(0, 10, (4,)))]
    with FlopCounterMode(display=False) as counter:
        gradient_by_depth(model, batch, layer=layer, batches=1)
    convs = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    assert cnn_read_macs((2, 6, 5), depth=4, width=3, batch_size=4, layer=layer) == convs // 2
    if layer == "layers.0":
        assert convs // 2 == 2 * cnn_forward_macs((2, 6, 5), depth=4, width=3, batch_size=4)


def test_the_plan_counts_the_backward_to_the_layer_read():
    """dense-gradients --layer layers.0: each of the 50 gradient reads costs a forward and a backward through
    every convolution; the plan said the multiply-adds of --layer classifier's reads (one forward each)."""
    from recipes._diagnostics.dense_plan import dense_gradients_plan

    recipe = load_script("recipes/diagnostics.py", "diagnostics_recipe_plan_layer")
    forward = cnn_forward_macs((1, 28, 28), 8, 32, 128)
    for layer, reads in (("classifier", 50), ("layers.0", 100)):
        args = recipe.build_parser().parse_args(["dense-gradients", "--dataset", "mnist", "--kind", "cnn",
                                                 "--batchnorm", "off", "--layer", layer])
        plan = dense_gradients_plan(args, ["cnn"], [False], (1, 28, 28))
        assert f"about {(3 * 300 + reads) * forward / 1e12:.3g} T multiply-adds" in plan, plan


def _dense_args(width: int):
    recipe = load_script("recipes/diagnostics.py", "diagnostics_recipe_memory")
    return recipe.build_parser().parse_args(["dense-gradients", "--width", str(width)])


def test_memory_for_nets_on_a_gpu_is_the_gpus_free_memory_not_the_hosts(monkeypatch):
    """The refusal compares what the nets need with the memory of the device they are built on: a CUDA
    device's free memory (torch.cuda.mem_get_info, which no host figure says anything of), the host's for the CPU.
    (No GPU here: mem_get_info and the host's figure are stood in for.)"""
    from recipes._diagnostics import dense_plan

    args, kinds, norms, shape = _dense_args(100_000), ["mlp"], [False], (1, 28, 28)
    need = dense_plan.dense_gradients_bytes(args, kinds, norms, shape, 10)
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: asked.append(torch.device(d)) or (need * 10, need * 20))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 0)  # (a GPU machine's own figures)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 0)
    host = need // 10  # the host has too little, the GPU plenty
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (_ for _ in ()).throw(OSError()) if f == "/proc/meminfo"
                        else real_open(f, *a, **k))
    monkeypatch.setattr(os, "sysconf", lambda k: host if k == "SC_PHYS_PAGES" else 1)
    assert dense_plan.available_memory("cpu") == host
    assert dense_plan.available_memory("cuda:1") == need * 10 and asked == [torch.device("cuda:1")]
    assert dense_plan.memory_problem(args, kinds, norms, shape, 10, device="cuda:1") is None
    on_cpu = dense_plan.memory_problem(args, kinds, norms, shape, 10, device="cpu")
    assert "this machine has available: lower --width" in on_cpu
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (need // 2, need * 20))
    on_gpu = dense_plan.memory_problem(args, kinds, norms, shape, 10, device=torch.device("cuda", 0))
    assert f"more than the {dense_plan._bytes(need // 2)} free on cuda:0: lower --width" in on_gpu


def test_a_gpu_whose_memory_cannot_be_read_refuses_nothing(monkeypatch):
    from recipes._diagnostics import dense_plan

    def no_cuda(device=None):
        raise RuntimeError("Found no NVIDIA driver on your system")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda)
    assert dense_plan.available_memory("cuda") is None
    assert dense_plan.memory_problem(_dense_args(100_000_000), ["mlp"], [False], (1, 28, 28), 10, device="cuda") is None


def test_memory_on_a_gpu_counts_the_blocks_the_caching_allocator_holds_unused(monkeypatch):
    """mem_get_info's free memory leaves out what PyTorch's caching allocator keeps reserved after tensors
    were freed (an earlier run in the same process, a notebook): new tensors reuse it, so the nets fit where
    free + reserved - allocated covers them; counting the driver's figure alone refused them."""
    from recipes._diagnostics import dense_plan

    args, kinds, norms, shape = _dense_args(100_000), ["mlp"], [False], (1, 28, 28)
    need = dense_plan.dense_gradients_bytes(args, kinds, norms, shape, 10)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (need // 4, need * 20))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: need * 3)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: need)
    assert dense_plan.available_memory("cuda:0") == need // 4 + 2 * need
    assert dense_plan.memory_problem(args, kinds, norms, shape, 10, device="cuda:0") is None
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: need * 3)  # none of it unused
    assert "free on cuda:0" in dense_plan.memory_problem(args, kinds, norms, shape, 10, device="cuda:0")


@pytest.mark.parametrize("kind, in_shape", [("mlp", (1, 28, 28)), ("cnn", (3, 9, 7))])
def test_the_plans_parameter_count_is_the_nets_own(kind, in_shape):
    """The memory plan counts each DenseCat's weights and biases (with --batchnorm on, the cnn's convolutions drop
    their biases and the BatchNorms add as many: the count stays within a few): a count of one layer too many
    passed every test."""
    batchnorm = False
    from torch import nn

    from adaptive.models import build_model
    from recipes._diagnostics.dense_plan import densecat_parameters

    m = build_model("densecat", num_classes=10, in_shape=in_shape, depth=4, width=5, kind=kind, batchnorm=batchnorm)
    own = sum(p.numel() for mod in m.modules() if not isinstance(mod, nn.modules.batchnorm._BatchNorm)
              for p in mod.parameters(recurse=False))
    assert densecat_parameters(in_shape, 4, 5, 10, kind) == own
