"""A few optimizer steps with a controller: the training loop several tests share."""
import torch
import torch.nn.functional as F


def train_steps(model, opt, ctrl, x, y, steps: int) -> None:
    """``steps`` optimizer steps; ``ctrl`` is stepped by hand only when no optimizer steps it."""
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if ctrl.optimizer is None:
            ctrl.step()


def reset_accelerate() -> None:
    """Forget the process's Accelerator state: each in-process run or test builds its own (mixed
    precision and gradient accumulation may differ between them)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def cpu_accelerator():
    """Generator for a fixture (``accelerator = pytest.fixture(cpu_accelerator)``): a fresh CPU
    Accelerator, its state forgotten afterwards."""
    from accelerate import Accelerator

    reset_accelerate()
    yield Accelerator(cpu=True)
    reset_accelerate()


def recipe_runner(recipe, tiny):
    """``run(tmp, *extra, on_step=None)``: ``recipe.main`` with the ``tiny`` settings, writing into
    ``tmp``, on a fresh Accelerator state."""
    def run(tmp, *extra, on_step=None):
        reset_accelerate()
        return recipe.main(list(tiny) + ["--output_dir", str(tmp), *extra], on_step=on_step)

    return run


def same_weights(a, b) -> bool:
    """Whether two runs' models hold bit-identical state_dicts."""
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fresh_recipe_state(monkeypatch):
    """Generator for an autouse fixture of in-process recipe tests (``_fresh = pytest.fixture(
    autouse=True)(fresh_recipe_state)``): no ACCELERATE_GRADIENT_ACCUMULATION_STEPS from the
    environment (one exported for DeepSpeed would turn into accumulation), and a fresh Accelerator
    state before and after."""
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    reset_accelerate()
    yield
    reset_accelerate()
