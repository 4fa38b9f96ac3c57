"""Connectome plumbing in value (config seeds and ~, the optimizer and weights checks of a checkpoint, unattached
optimizers' warnings, the connectome's optimizer hooks and take-over, plugin resume hints): behaviours a careless edit
changed unnoticed, each pinned."""
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive


def _pruned(model, n="0.weight"):
    conn = adaptive.Connectome(model)
    m = torch.ones_like(conn.masks[n])
    m[0, :2] = False
    conn.set_masks({n: m})
    return conn, m


# ---------------------------------------------------------------- config.py
def test_the_largest_seed_numpy_takes_is_in_range():  # cf5
    from adaptive.config import seed_in_range

    assert seed_in_range(2**32 - 1) and not seed_in_range(2**32) and seed_in_range(0)


@dataclass
class _Dirs:
    data_dir: Optional[str] = "default"


def test_a_tilde_on_the_command_line_is_the_home_folder_not_none():  # cf6
    from adaptive.config import parse_config

    assert parse_config(_Dirs, ["--data_dir", "~"]).data_dir == "~"
    assert parse_config(_Dirs, ["--data_dir", "none"]).data_dir is None


# ---------------------------------------------------------------- checkpoint_optimizer.py
def test_a_saved_group_lacking_a_flag_is_still_this_optimizers_state():  # cko4
    from adaptive.checkpoint_optimizer import _other_optimizer

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    saved = [{k: v for k, v in g.items() if k not in ("nesterov", "maximize", "differentiable")}
             for g in opt.state_dict()["param_groups"]]
    assert _other_optimizer(saved, opt) is None  # flags torch adds across versions are not compared


def test_an_lbfgs_history_vector_of_another_length_is_named():  # cko6
    from adaptive.checkpoint_optimizer import _lbfgs_misfit

    p = nn.Parameter(torch.zeros(5))
    opt = torch.optim.LBFGS([p])
    assert _lbfgs_misfit(opt, {"old_dirs": [torch.zeros(5)], "old_stps": [torch.zeros(5)]}) is None
    assert _lbfgs_misfit(opt, {"old_dirs": [torch.zeros(7)]}) == ("old_dirs", 7, 5)


def test_the_second_optimizers_file_is_read_for_the_second_optimizer(tmp_path):  # cko2
    from adaptive.checkpoint_optimizer import saved_optimizer_problem

    a, b = nn.Linear(3, 2), nn.Linear(5, 4)
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for m, o in ((a, oa), (b, ob)):
        m(torch.randn(1, m.in_features)).sum().backward()
        o.step()
    torch.save(oa.state_dict(), tmp_path / "optimizer.bin")
    torch.save(ob.state_dict(), tmp_path / "optimizer_1.bin")
    acc = SimpleNamespace(_optimizers=[oa, ob], _models=[a, b], unwrap_model=lambda m: m)
    assert saved_optimizer_problem(acc, tmp_path) is None


# ---------------------------------------------------------------- checkpoint_weights.py
def test_a_single_non_zero_pruned_weight_leaves_the_connectome_out_of_the_record():  # ckw4
    from adaptive.checkpoint_weights import zero_where_pruned

    model = nn.Sequential(nn.Linear(4, 3))
    conn, m = _pruned(model)
    acc = SimpleNamespace(_custom_objects=[conn])
    assert zero_where_pruned(acc) == [0]
    with torch.no_grad():
        model[0].weight[0, 0] = 1.0  # written in place since the last step
    assert zero_where_pruned(acc) == []


def _two_layer_checkpoint(tmp_path, model_index):
    from safetensors.torch import save_file

    from adaptive import checkpoint_weights

    torch.manual_seed(0)
    first, model = nn.Sequential(nn.Linear(2, 2)), nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    masks["0.weight"][0, :3] = False
    masks["1.weight"][1, :2] = False
    conn.set_masks(masks)
    torch.save(conn.state_dict(), tmp_path / "custom_checkpoint_0.pkl")
    dense = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    dense["0.weight"][0, :3] = 1.0
    dense["1.weight"][1, :2] = 1.0
    name = f"model_{model_index}.safetensors" if model_index else "model.safetensors"
    save_file(dense, str(tmp_path / name))
    if model_index:
        save_file({k: v.detach().clone().contiguous() for k, v in first.state_dict().items()}, str(tmp_path / "model.safetensors"))
    checkpoint_weights.write_record(tmp_path, [0])
    models = [first, model] if model_index else [model]
    return SimpleNamespace(_custom_objects=[conn], _models=models)


def test_a_mixed_checkpoint_counts_the_non_zero_pruned_weights_of_every_layer(tmp_path):  # ckw3
    from adaptive.checkpoint_weights import nonzero_pruned_weights

    why = nonzero_pruned_weights(_two_layer_checkpoint(tmp_path, 0), tmp_path)
    assert why is not None and "holds 5 non-zero weight(s)" in why and "in 2 layer(s)" in why


def test_the_second_models_file_is_read_against_its_masks(tmp_path):  # ckw2
    from adaptive.checkpoint_weights import nonzero_pruned_weights

    why = nonzero_pruned_weights(_two_layer_checkpoint(tmp_path, 1), tmp_path)
    assert why is not None and why.startswith("model_1.safetensors holds 5 non-zero")


# ---------------------------------------------------------------- unattached.py
def test_an_unattached_optimizer_is_warned_of_once_one_of_its_idle_weights_gets_a_gradient():  # un1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conn = adaptive.Connectome(model)
    conn.attach(opt)
    other = torch.optim.SGD([model[0].weight, model[2].weight], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.step()  # neither weight has a gradient yet
    model[0].weight.grad = torch.ones_like(model[0].weight)  # one of them has one now, the other still none
    with pytest.warns(UserWarning, match=r"not attached to \(SGD\) steps its weights 0.weight"):
        other.step()


def test_an_unattached_optimizer_is_warned_of_once_a_param_group_adds_masked_weights():  # un2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    conn = adaptive.Connectome(model, exclude=["2*"])
    conn.attach(torch.optim.SGD(model[0].parameters(), lr=0.1))
    head = torch.optim.SGD(model[2].parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head.step()  # steps no connectome weight
    head.add_param_group({"params": [model[0].weight]})
    with pytest.warns(UserWarning, match=r"not attached to \(SGD\) steps its weights 0.weight"):
        head.step()


# ---------------------------------------------------------------- connectome_optimizers.py
def test_a_closure_step_runs_its_forward_on_masked_weights():  # co8
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    conn, m = _pruned(model)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=1)
    conn.attach(opt)
    with torch.no_grad():
        model[0].weight.fill_(0.5)  # an in-place write since the last step (a re-init)
    seen = []

    def closure():
        seen.append(model[0].weight[~m].abs().max().item())
        opt.zero_grad()
        loss = model(torch.randn(2, 4)).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    assert seen[0] == 0.0


def test_a_taken_over_connectome_attached_again_does_not_restart_its_controller():  # co7
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    old = adaptive.Connectome(model)
    ctrl = adaptive.Controller(old, opt, policy="set", density=0.5, update_every=5, seed=0)
    new = adaptive.Connectome(model)
    with pytest.warns(UserWarning, match="now detached"):
        new.attach(opt)
    assert ctrl.optimizer is None
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old.attach(opt2)
    assert ctrl.optimizer is None


def test_a_layer_two_optimizers_hold_is_observed_at_the_first_ones_step():  # co2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    conn = adaptive.Connectome(model)
    o1 = torch.optim.SGD([model[0].weight, model[1].weight], lr=0.1)
    o2 = torch.optim.SGD([model[1].weight], lr=0.1)
    conn.attach(o1)
    conn.attach(o2)
    seen = []
    conn.add_observer(lambda: seen.append(conn.stepping_layers(primary=o1)))
    model(torch.randn(3, 4)).sum().backward()
    o1.step()
    o2.step()
    assert seen == [["0.weight", "1.weight"], []]


def test_a_skip_read_from_found_inf_follows_an_in_place_write_of_it():  # co4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    conn, m = _pruned(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)  # a fused step reads found_inf itself
    conn.attach(opt)
    conn.mask_in_backward = False
    calls = []
    conn.add_observer(lambda: calls.append(1))
    opt.found_inf = torch.tensor(1.0)  # a loop keeping one tensor and writing it in place
    model(torch.randn(2, 4)).sum().backward()
    opt.step()  # skipped: no observation
    opt.found_inf.fill_(0.0)
    opt.step()  # not skipped now
    assert calls == [1]
    assert model[0].weight.grad[~m].abs().max().item() == 0.0


# ---------------------------------------------------------------- plugins.py
def test_a_resume_hint_names_only_the_recorded_plugins_not_given_again(tmp_path):  # pl2
    from adaptive.plugins import resume_hint

    a, b = str(tmp_path / "a_ext.py"), str(tmp_path / "b_ext.py")
    (tmp_path / "config.yaml").write_text(f"plugins: [{a}, {b}]\n")
    hint = resume_hint(tmp_path / "config.yaml", [a])
    assert b in hint and a not in hint
    assert resume_hint(tmp_path / "config.yaml", [a, b]) == ""


def test_a_weight_no_attached_optimizer_holds_has_its_gradient_masked_at_the_first_step():  # co1
    """Two optimizers attached, neither holding the head's weight (a third, unattached one steps it): its pruned
    synapses' gradients are masked at the first attached step, as those of a single optimizer's weights are."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    conn = adaptive.Connectome(model)
    m = torch.ones_like(conn.masks["2.weight"])
    m[0, :3] = False
    conn.set_masks({"2.weight": m})
    o1, o2 = (torch.optim.SGD([model[i].weight], lr=0.1) for i in (0, 1))
    conn.attach(o1)
    conn.attach(o2)
    conn.mask_in_backward = False  # the gradients stay dense until a step masks them
    model(torch.randn(3, 4)).pow(2).sum().backward()
    assert model[2].weight.grad[~m].abs().max().item() > 0
    o1.step()
    assert model[2].weight.grad[~m].abs().max().item() == 0.0
