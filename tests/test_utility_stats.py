"""The utility window's statistics and the estimators read from them: what they are said to measure."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _ports import two_rank_records  # noqa: E402


def _script():
    path = Path(__file__).parent / "scripts" / "two_process_gradient_stats.py"
    spec = importlib.util.spec_from_file_location("two_process_gradient_stats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _close(a, b):
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-9)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The records of one two-process run of tests/scripts/two_process_gradient_stats.py, which the tests
    below read (one launch for all of them)."""
    return two_rank_records("two_process_gradient_stats.py", tmp_path_factory.mktemp("two_process_gradient_stats"))


def test_two_processes_window_is_the_window_of_all_their_batches(ranks):
    """Two processes observing two batches each (mask_only: gradients differ by process) hold four batch
    gradients: their reduced window is one process's window of the four, count, batch variance and the
    consistency and evidence scores included. The count was the mean over processes, 2: the batch
    variance's correction was 2/1 for 4/3, and the noise of the mean gradient, variance / n, twice what
    four batches give, so consistency shrank the gradient as if half of them had been seen. Where every
    process observed the same gradients (the same batches, or DDP's averaged one), the count stays."""
    script = _script()
    one = script.window(script.batches())
    rank = ranks
    assert rank[0] == rank[1], "the processes' reduced statistics differ"
    got = rank[0]
    assert one["n"] == 4 and got["own"]["n"] == 4, (one["n"], got["own"]["n"])
    for key in ("mean", "variance", "consistency", "evidence"):
        _close(got["own"][key], one[key])
        _close(got["same"][key], one[key])
    assert got["same"]["n"] == 4
    # DDP: one 16-example gradient per step, the same on both processes: a window of 2, as on one process
    pairs = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
             for a, b in zip(script.batches()[0::2], script.batches()[1::2])]
    ddp = script.window(pairs)
    assert got["ddp"]["n"] == ddp["n"] == 2
    # DDP's gradient is the average of the two processes' 8-example gradients, the reference one 16-example
    # backward: the same number to float32's last bits, a few ulps of |g| apart. The variance of two such
    # steps, (g1 - g2)^2 / 2 where g1 and g2 nearly agree, carries that difference as 2 |g1 - g2| ulps(|g|),
    # far above 1e-9 next to its own size; its square root, the steps' spread, carries it as ulps(|g|) alone
    # and is compared at 1e-5 of the largest mean gradient (a window counted 4 would scale it by 3 ** 0.5)
    for key in ("mean", "consistency"):
        _close(got["ddp"][key], ddp[key])
    scale = 1e-5 * max(map(abs, ddp["mean"]))
    torch.testing.assert_close(torch.tensor(got["ddp"]["variance"]).sqrt(), torch.tensor(ddp["variance"]).sqrt(),
                               rtol=1e-5, atol=scale)


def test_the_same_gradients_reduced_in_another_order_still_count_once(ranks):
    """Processes holding the same gradients bit for bit (DDP's averaged one) observe them once between them,
    whatever order each device adds up its fingerprint in: one process with one torch thread, the other
    with two, a window of 2 stays 2. The fingerprint was a float64 sum, whose last bits follow the thread
    count (or a GPU's model): the processes read as differing and the window counted 4, halving the noise
    the estimators credit to its mean."""
    rank = ranks
    assert rank[0]["same_by_threads"] == rank[1]["same_by_threads"] == {"n": 2}, rank


def test_windows_of_one_step_over_two_processes_in_mask_only_mode_are_not_warned_of_as_one_batch(ranks):
    """In mask_only mode each process observes its own batches: a window of one step over two processes holds
    two batch gradients (GradientStats.n), whose spread gives consistency its per-sample Fisher and evidence its
    t-statistic. The controller warned there that one batch was too few, naming a fix the run did not need."""
    rank = ranks
    assert rank[0]["short_window"] == rank[1]["short_window"] == [], rank[0]["short_window"]


def _window(batches, shape=(1, 3)):
    """A one-layer connectome whose utility window holds the batch gradients ``batches`` (each a list
    of ``shape[1]`` values), and the layer's context for an estimator (train mode: no restore values)."""
    import adaptive
    from adaptive.utility.base import UtilityContext
    from adaptive.utility.stats import GradientStats

    m = torch.nn.Linear(shape[1], shape[0], bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 1.5, shape[0] * shape[1]).reshape(shape))
    conn = adaptive.Connectome(m)
    stats = GradientStats(conn)
    for b in batches:
        m.weight.grad = torch.tensor(b, dtype=torch.float32).reshape(shape)
        stats.observe()
    ctx = UtilityContext("weight", m.weight.detach(), conn.masks["weight"], None, stats, torch.Generator(), batch_size=4)
    return stats, ctx


def test_batch_variance_of_identical_batches_is_zero_not_a_rounding_error_below_it():
    """Five batch gradients of 0.7: mean square less squared mean is -3.7e-8 in float32, a variance below
    zero, which (with the Fisher built from it) no estimator's formula is meant to see."""
    stats, _ = _window([[0.7, 0.7, 0.7]] * 5)
    assert torch.equal(stats.batch_variance("weight"), torch.zeros(1, 3))


def test_consistency_shrinks_the_mean_gradient_by_its_signal_to_noise_ratio_computed_by_hand():
    """Consistency's first-order gradient is g * max(0, 1 - (v/n) / g^2) with v the unbiased batch variance
    and n the window's batches: a synapse whose batches agree keeps almost all of g, one whose batches
    disagree (t^2 < 1) counts for nothing, never with its sign flipped."""
    from adaptive.utility import get_estimator

    batches = [[1.0, 1.0, 2.0], [1.0, -1.0, 2.0], [1.2, 0.5, 2.5]]
    stats, ctx = _window(batches)
    b = torch.tensor(batches, dtype=torch.float64)
    g, v, n = b.mean(0), b.var(0, unbiased=True), b.shape[0]
    shrunk = g * (1 - (v / n) / (g * g)).clamp_min(0)
    assert shrunk[1] == 0 and 0 < shrunk[0] < g[0]  # the case each synapse stands for
    est = get_estimator("consistency")
    torch.testing.assert_close(est.gradient(ctx).double().reshape(-1), shrunk, rtol=1e-5, atol=1e-7)
    w = ctx.weight.double().reshape(-1)
    f = g * g + 4 * v  # the per-sample Fisher with batch_size 4
    torch.testing.assert_close(est.removal_cost(ctx).double().reshape(-1), -shrunk * w + 0.5 * f * w * w,
                               rtol=1e-5, atol=1e-7)


def test_obd_growth_from_one_batch_ranks_by_the_gradient_with_the_layers_mean_curvature():
    """With one batch in the window, OBD's train-mode growth gain g^2/(2F) divides by the layer's mean F:
    the per-synapse F of that batch is g^2 itself, every gain 1/2, and growth would go by index."""
    from adaptive.utility import get_estimator

    stats, ctx = _window([[0.1, -3.0, 1.0]])
    g = torch.tensor([[0.1, -3.0, 1.0]])
    gain = get_estimator("obd").restoration_gain(ctx)
    torch.testing.assert_close(gain, g * g / (2 * ((g * g).mean() + 1e-12)))
    assert gain.reshape(-1).argsort(descending=True).tolist() == [1, 2, 0]


def test_growth_gain_with_damping_zero_is_zero_where_no_gradient_came_not_nan():
    """``damping=0`` (accepted: g^2/(2F) undamped) made the gain of a synapse no gradient reached, whose F
    is 0 too, 0/0 = NaN, which the controller refuses: a run with an input that is always 0 (MNIST's border
    pixels) ended at its first update with a growth policy. No gradient, no gain; the others are g^2/(2F)."""
    import adaptive
    import torch.nn.functional as F
    from adaptive.utility import get_estimator

    for batches in ([[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0], [0.0, 0.5, 3.0]]):  # one batch (the layer's mean F), two
        stats, ctx = _window(batches)
        for name in ("obd", "consistency", "curvature"):
            gain = get_estimator(name, damping=0.0).restoration_gain(ctx)
            assert bool(torch.isfinite(gain).all()) and gain[0, 0] == 0 and bool((gain[0, 1:] > 0).all()), (name, gain)
            damped = get_estimator(name).restoration_gain(ctx)
            torch.testing.assert_close(gain, damped)  # 1e-12 of damping changes nothing else
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    x[:, 0] = 0  # an input that never fires: its synapses get no gradient
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = adaptive.Controller(adaptive.Connectome(model), opt, policy="utility", density=0.5, update_every=2,
                               end_step=8, estimator=get_estimator("curvature", damping=0.0))
    for i in range(8):
        F.cross_entropy(model(x[i * 8:(i + 1) * 8]), y[i * 8:(i + 1) * 8]).backward()
        opt.step()
        opt.zero_grad()
    assert len(ctrl.events) == 5 and ctrl.conn.density() == 0.5  # the init and four updates, none refused


def test_evidence_on_one_batch_windows_is_warned_of_as_learning_nothing():
    """Evidence judges a synapse by the t-statistic of its window's batch gradients, mean against
    batch-to-batch spread: a window of one batch has no spread, so it adds no evidence at all and the
    scores stay the magnitude prior, update after update. ``optimize_connectome(estimator="evidence")``
    (its default window is 1) and ``prune_pretrained.py --estimator evidence`` ran so, as magnitude
    pruning, without a word. The controller now says so; a window of two batches learns and is not warned of."""
    import warnings

    import adaptive
    import torch.nn.functional as F

    def run(update_every):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        conn = adaptive.Connectome(m, mode="mask_only")
        est = adaptive.get_estimator("evidence")
        ctrl = adaptive.Controller(conn, policy="crawl", estimator=est, update_every=update_every, edit_decay="constant")
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        for k in range(4):
            m.zero_grad()
            F.cross_entropy(m(x[4 * (k % 2):][:8]), y[4 * (k % 2):][:8]).backward()
            ctrl.observe()
            ctrl.step()
        return sum(float(e.abs().sum()) for e in est.evidence.values())

    with pytest.warns(UserWarning, match=r"estimator evidence learns from the t-statistic.*window of 1 has no spread") as seen:
        learned = run(1)
    # the fix in each entry point's own terms: recipes/adaptive.py --mode mask_only has no --window
    assert all(k in str(seen[0].message) for k in ("window=2", "--window 2 for recipes/prune_pretrained.py",
                                                   "--update_every 2 for recipes/adaptive.py")), seen[0].message
    assert learned == 0.0  # what the warning says: nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(2) > 0.0


def test_consistency_shrinkage_is_scale_invariant_and_its_cost_is_not():
    """What docs/python_api.md says of scaled gradients (a GradScaler's, observed without ``scaler=``):
    consistency's shrunk gradient scales with them exactly (its signal-to-noise ratio is scale-free), but
    its removal cost, -g*w plus F*w^2/2, does not: the curvature term grows with the square of the scale."""
    from adaptive.utility import get_estimator

    batches = [[1.0, 0.3, -2.0], [0.5, -0.2, -1.0], [0.9, 0.6, -1.5]]
    s = 2.0 ** 16
    _, plain = _window(batches)
    _, scaled = _window([[x * s for x in b] for b in batches])
    est = get_estimator("consistency")
    torch.testing.assert_close(est.gradient(scaled), est.gradient(plain) * s)
    cost, cost_scaled = est.removal_cost(plain), est.removal_cost(scaled) / s
    assert cost[0, 0] < 0 < cost_scaled[0, 0]  # at the scale, curvature outweighs the first-order term


def test_presence_and_evidence_growing_in_train_mode_without_original_values_are_warned_of():
    """Presence and evidence value a synapse by g * w0, w0 its value when present: in train mode an absent
    synapse's is 0.0, so its restoration gain never moves from its value when pruned (0 where it was absent
    from the start), and a policy that grows by it regrew by stale values, silently. The controller now says
    so; with grow_init="original" (w0 the original weights) and in mask_only mode the gains learn, unwarned."""
    import warnings

    import adaptive
    import torch.nn.functional as F

    def run(est, mode="train", grow_init=None):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        conn = adaptive.Connectome(m, mode=mode)
        if grow_init == "original":
            conn.keep_original()
        ctrl = adaptive.Controller(conn, policy="utility", estimator=est, density=0.5, update_every=2, end_step=3,
                                   grow_init=grow_init)
        absent = {n: ~k.clone() for n, k in conn.masks.items()}  # absent from the start
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        for k in range(2):
            m.zero_grad()
            F.cross_entropy(m(x[8 * k:][:8]), y[8 * k:][:8]).backward()
            ctrl.observe()
            ctrl.step()
        gain = ctrl.scores("gain")
        return max(float(gain[n][a].abs().max()) for n, a in absent.items())

    for est in ("presence", "evidence"):
        with pytest.warns(UserWarning, match=f"estimator {est} values a synapse by its presence derivative") as seen:
            assert run(est) == 0.0  # what the warning says: the gains of synapses absent from the start stay 0
        # the fix in the recipe's terms too (the controller keeps the original weights itself: no call needed first)
        assert "--controller_kw grow_init=original in recipes/adaptive.py" in str(seen[0].message), seen[0].message
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert run(est, grow_init="original") > 0.0
            assert run(est, mode="mask_only") > 0.0


def test_first_and_second_order_estimates_follow_the_loss_change_measured_by_brute_force():
    """The promise, measured: on a small net in mask_only mode (half its synapses absent), the window of
    four equal batches, each synapse removed (zeroed) or restored (its original value) alone and the loss
    over the window's examples measured. Taylor's scores are the exact first-order change, -g*w and -g*w0
    with g the gradient of that loss (what autograd gives on all the examples at once); Taylor's and OBD's
    removal costs and restoration gains rank the measured changes nearly as they are (Spearman > 0.9), with
    the sign of a loss increase for a cost and of a decrease for a gain (checked for costs alone before); and
    OBD's curvature term follows what the measured change adds to Taylor's, in size and order: the ranks
    alone passed with that term dropped, of the wrong sign, or ten times too large."""
    import adaptive
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    conn = adaptive.Connectome(m, mode="mask_only")
    gen = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in conn.params.items()}

    def loss():
        return F.cross_entropy(m(x), y)

    def rank(t):
        return t.argsort().argsort().double()

    def spearman(a, b):
        return float(torch.corrcoef(torch.stack([rank(a), rank(b)]))[0, 1])

    scores = {}
    for est in ("taylor", "obd"):
        ctrl = adaptive.Controller(conn, policy="utility", estimator=est, density=0.5, update_every=100, batch_size=16)
        conn.set_masks(masks)
        for k in range(4):
            m.zero_grad()
            F.cross_entropy(m(x[16 * k:16 * (k + 1)]), y[16 * k:16 * (k + 1)]).backward()
            ctrl.observe()
        scores[est] = (ctrl.scores("cost"), ctrl.scores("gain"))
    m.zero_grad()
    loss().backward()
    for n, p in conn.params.items():
        cost, gain = scores["taylor"][0][n], scores["taylor"][1][n]
        torch.testing.assert_close(cost, -p.grad * p.detach(), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(gain[~masks[n]], (-p.grad * conn.original[n])[~masks[n]], rtol=1e-4, atol=1e-7)
    removed, restored, keys = [], [], []
    with torch.no_grad():
        base = float(loss())
        for n, p in conn.params.items():
            for i in range(p.numel()):
                w = p.view(-1)[i].item()
                p.view(-1)[i] = 0.0 if masks[n].view(-1)[i] else conn.original[n].view(-1)[i]
                (removed if masks[n].view(-1)[i] else restored).append(float(loss()) - base)
                keys.append((n, i, bool(masks[n].view(-1)[i])))
                p.view(-1)[i] = w
    removed, restored = torch.tensor(removed), -torch.tensor(restored)  # loss increase; loss decrease
    picked = {}
    for est, (cost, gain) in scores.items():
        c = torch.stack([cost[n].view(-1)[i] for n, i, present in keys if present])
        g = torch.stack([gain[n].view(-1)[i] for n, i, present in keys if not present])
        picked[est] = c, g
        assert spearman(c, removed) > 0.9 and spearman(g, restored) > 0.9, (est, spearman(c, removed), spearman(g, restored))
        # sign where the change is not lost in the second order
        for score, measured in ((c, removed), (g, restored)):
            big = measured.abs() > measured.abs().median()
            assert bool(((score[big] > 0) == (measured[big] > 0)).all()), est
    # OBD's second-order term (F*w^2/2 of the per-sample Fisher; -F*w0^2/2 in a gain) is what the measured
    # change adds to the first-order one: in size (the mean, within a factor of 3) and in order (Spearman > 0.4).
    # The ranks above hold with that term missing, ten times too large or of the wrong sign
    (tc, tg), (oc, og) = picked["taylor"], picked["obd"]
    for term, rest in ((oc - tc, removed - tc), (og - tg, restored - tg)):
        ratio = float(term.mean() / rest.mean())
        assert 1 / 3 < ratio < 3 and spearman(term, rest) > 0.4, (ratio, spearman(term, rest))


def test_a_reset_forgets_the_processes_a_window_was_reduced_over():
    """After a two-process reduce a layer's window counts two replicas; reset starts the next window afresh (one
    observation after it is n() == 1: the stale count inflated the next window's variance correction)."""
    from torch import nn

    from adaptive import Connectome
    from adaptive.utility.stats import GradientStats

    conn = Connectome(nn.Linear(3, 2))
    stats = GradientStats(conn)
    (n,) = conn.params
    conn.params[n].grad = torch.ones_like(conn.params[n])
    stats.observe()
    stats.replicas[n] = 2  # (as a reduce over two processes leaves it)
    stats.reset()
    stats.observe()
    assert stats.n(n) == 1
