"""What importing the package costs: every recipe, ``--help`` included, starts by importing it."""
import os
import subprocess
import sys

from _scripts import CHILD_TIMEOUT, ROOT

# Imports the packages and parses a recipe's --help, then says which heavy modules that loaded; then
# loads torchvision (as a model that uses its StochasticDepth does) and asks the tracer's tables about it.
_CHILD = r"""
import runpy, sys
import adaptive, graphs
sys.argv = ["recipes/adaptive.py", "--help"]
try:
    runpy.run_path("recipes/adaptive.py", run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
print(sorted(m for m in ("torch._dynamo", "torchvision") if m in sys.modules))

import torch.fx
from torch import nn
from torchvision.ops import StochasticDepth
from graphs import ops


class Leaf(torch.fx.Tracer):  # keeps the module whole, one call_module node, where fx's own tracer goes inside
    def is_leaf_module(self, m, name):
        return isinstance(m, StochasticDepth) or super().is_leaf_module(m, name)


net = nn.Sequential(nn.Linear(3, 4), StochasticDepth(0.5, "row"))
for graph in (torch.fx.symbolic_trace(net).graph, Leaf().trace(net)):
    node = list(graph.nodes)[-2]  # the node before the output
    module = net[1] if node.op == "call_module" else None
    print(node.op, ops.categorize(node, module), ops.elementwise(node, module))
"""


def test_import_and_help_load_neither_dynamo_nor_torchvision():
    # ``import adaptive`` imported torch._dynamo (over a second, at every start) for the decorator that keeps
    # the step hooks out of a compiled opt.step, and ``import graphs`` imported torchvision (and dynamo with
    # it) to know StochasticDepth. The tracer still knows StochasticDepth once torchvision has loaded it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded, *taught = run.stdout.strip().splitlines()[-3:]
    assert loaded == "[]"
    assert taught == ["call_function pointwise True", "call_module pointwise True"]
