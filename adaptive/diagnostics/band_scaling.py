"""Per-band gradient scaling: the optimizer sees each depth band's gradients rescaled to a common
typical magnitude.

Weights that read signals of different depth can have gradients orders of magnitude apart (see
:mod:`adaptive.diagnostics.gradient_depth`), so one learning rate is too large for some bands and
too small for others. :class:`BandGradientScaler` places a gradient hook on each chosen weight that
multiplies every band by ``common / typical_band``, where ``typical_band`` is a running geometric
mean of the band's ``|grad|`` and ``common`` the geometric mean of the bands' typical magnitudes
(so the layer's overall scale is kept). On a pruned model the typical magnitudes are those of the
live synapses' gradients only. A layer whose inputs all share one depth (one band: its scale is
``common / typical = 1`` exactly) is left alone: no hook, no statistics, no all-reduce.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..connectome import _plain_module, _stripped, _wrapper_prefix
from ..distributed import collective_device, is_distributed
from ._common import find_weight, live_mask, model_connectome, module_names, plain_layer_name, scaler_suspended
from ._shared_calls import CallRecorder, TiedReads, parts_adding_up
from .gradient_depth import resolve_call_depths, weight_depths
from ..warn import warn_user
from ..wrappers import eager


class BandGradientScaler:
    """Rescale the gradients of ``layers`` band by band (bands = source depths of their inputs).

    Args:
        model: the network; depths come from ``depths[layer]``, else ``model.input_depths(layer)``,
            else the data flow traced by :mod:`graphs` (:func:`resolve_call_depths`). A DDP, DataParallel
            or ``torch.compile`` wrapper: those of the module inside, its layers named as a connectome
            names them (``NAME``; ``module.NAME`` is taken as ``NAME``).
        layers: module names (a module held under several, ``self.out = self.head``, by any of them; its
            state is kept under its first); default every layer the model reports depths for
            (``model.depth_layers`` if it has that attribute, else all Linear/Conv layers for which
            ``input_depths`` works).
        depths: ``{layer: depths}``, one depth per input unit, or one row of them per call of a layer
            called several times in one forward (weight sharing), in call order; a layer by any of its
            names (``self.out = self.head``: under ``out`` for ``layers=["head"]``). Without ``layers``, the
            layers named here (a transposed convolution too) are scaled; a name that no scaled layer takes
            (misspelt, or without ``layers`` a module with no Linear or convolution weight) is refused, naming it.
        momentum: of the running log-magnitude per band (0 uses the current batch only).
        example: an input batch to trace depths with (default: an input the tracer builds).
        conn: the model's :class:`~adaptive.Connectome` when it is pruned; without it, the one
            attached to an optimizer and masking the weight when its gradient arrives (so one
            attached after the scaler is built counts too).
    On a pruned model only the live synapses' gradients (the connectome's masks as the gradient
    arrives) enter the running sizes: the hook sees the gradient as autograd produces it, dense at
    pruned positions too, and a pruned position's gradient is no synapse's. Every position of the
    gradient is scaled, pruned ones included (growth reads them). A band whose weights are all
    pruned keeps the typical size of its last live gradients, and its place in the common size,
    until a synapse of it is regrown, so its scale moves only with the common size (a band pruned
    before its first gradient keeps scale 1 and no place in it).
    A layer of one band (every input of every call at one depth: each layer of a plain ResNet with
    traced depths) would be scaled by ``common / typical = 1`` exactly, whatever its gradients: it
    gets no gradient hook, no call recorder and no all-reduce, its gradient is left as autograd gives it
    (as the hook left it, bit for bit), its :meth:`scales` read 1.0 from the start, and it has no running
    size (a state saved by a version that kept one is taken, checked and saved again, unused).
    A tied weight, which a hook refuses where bands differ (below), is no concern of such a layer: its
    one scale of 1 is the same for every part of its gradient. Its calls are counted (a forward pre-hook):
    a forward that calls it more times than its depths have rows (a call in train mode only, not in the
    traced eval-mode graph, may read another depth, so the layer may have bands to scale) warns once.
    The hook acts on ``param.grad`` as autograd produces it, so any optimizer sees scaled gradients.
    Under a process group of more than one process (DDP, Accelerate) the hook runs before the
    gradients are reduced, on each process's own gradient; it sums its per-band statistics (sum of
    log ``|grad|`` and number of entries: two float64 numbers per band) with every other process's
    (one all-reduce per scaled layer and backward; a CPU model's under the NCCL backend through the
    process's GPU, as :func:`~adaptive.distributed.all_reduce_mean_` does), so every process keeps the same running sizes and
    applies the same scales: a band's size of this backward is the geometric mean of ``|grad|`` over
    the live entries of all the processes' gradients together, what one process would compute on all
    of them, and DDP's average of the scaled gradients is those scales times the averaged gradient
    (a layer of one band has no hook, so no all-reduce).
    (The averaged gradient's own size exists only after the reduction the hook precedes.) Every
    process must therefore run each backward, and each scaled layer must get a gradient in it on
    every process or on none: a layer that DDP's ``find_unused_parameters=True`` lets one process
    leave out (a branch taken on some processes only) leaves that process's all-reduces paired with
    other layers' or DDP's own (an abort under gloo, a hang under NCCL), so scale only layers every
    process uses. So must each layer's bands be the same on every process (a layer hooked on one and not
    on another unpairs the all-reduces alike): a scaler built under such a group compares them across
    the processes (one ``all_gather_object``), and every process refuses a difference, naming the layer.
    The micro-steps of gradient accumulation (``no_sync``) reduce their statistics too,
    each scaled alike on every process. The diagnostics, which one process may run alone, suspend
    the hooks (see below). Each of those all-reduces blocks the backward, behind DDP's gradient buckets
    already in flight: recipes/benchmarks/band_scaling_ddp.py measures what they cost a step.
    A layer called several times in one forward, each call reading a signal of another depth
    (traced: the graph's ``NAME``, ``NAME#2``, ...; or ``depths`` rows), has each call's part of the
    gradient (:class:`CallRecorder`: its output gradient through that call alone) scaled by the bands
    of that call, the parts counted in their bands' running sizes; its calls are those of the model's
    latest forward, so run one backward per forward of ``model`` (a backward over two forwards is
    refused, as is a forward calling the layer another number of times than its depths have rows).
    A call under ``torch.no_grad()`` contributes nothing, and its bands no running size. Depths
    given once for such a layer serve every call (with a warning), as for :func:`~adaptive.diagnostics.gradient_by_depth`.
    While a diagnostic takes gradients of the model (inside
    :func:`~adaptive.diagnostics._common.scalers_suspended` ``(model)``) the hooks on its weights do
    nothing: no scaling, no state update; a scaler on another model's weights keeps working. A layer (of
    several bands) whose weight another module holds too and the forward runs (an Embedding tied to a head) is refused at its
    backward (:class:`~adaptive.diagnostics._shared_calls.TiedWeightError`, before its running sizes move), as
    :func:`~adaptive.diagnostics.gradient_by_depth` refuses it: that module's part of the gradient has no depth of the layer's inputs.
    A NaN or
    inf gradient entry takes no part in the running state (it passes through, scaled). Call
    :meth:`remove` to take the hooks off.
    A weight replaced after the scaler was built (``model.to("meta")`` then ``to_empty()``,
    ``load_state_dict(assign=True)``, a conversion under
    ``torch.__future__.set_swap_module_params_on_conversion(True)``) loses its gradient hook with the
    tensor it was on: the model's next forward moves the hook onto the new weight, with a warning
    (a replacement of another shape is refused there). A weight computed at each call from the hooked
    Parameter (``torch.nn.utils.prune``, a parametrization added after the scaler was built) is no
    replacement: the Parameter gets the gradient, and the hook stays on it.
    The hooks follow the gradient's device: a model moved after the scaler was built (``.cuda()``,
    another dtype) is scaled there, each layer's band index and running sizes moved at its first
    gradient there (none left on the device the model left; later gradients copy nothing).
    :meth:`state_dict` / :meth:`load_state_dict` carry the running sizes over a checkpoint, so a
    resumed run scales as an uninterrupted one. ``momentum`` is no part of that state (a running
    size is a band's typical log ``|grad|`` whatever momentum averaged it, as a BatchNorm's running
    mean): the loading scaler's own moves it from then on, so resume with the saved run's for a bit
    for bit continuation.
    """

    def __init__(self, model: nn.Module, layers: Optional[Iterable[str]] = None,
                 depths: Optional[Dict[str, torch.Tensor]] = None, momentum: float = 0.9,
                 example: Optional[torch.Tensor] = None, conn=None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        # a wrapper (DDP, DataParallel, torch.compile): its module's layers, named as a connectome names them
        plain = _plain_module(model)
        depths = {plain_layer_name(model, k): v for k, v in (depths or {}).items()}
        chosen = layers is not None  # (depths= of a layer left out of layers= are then the caller's choice)
        if layers is None:
            layers = list(getattr(plain, "depth_layers", None) or self._layers_with_depths(plain, depths))
        layers = [plain_layer_name(model, layer) for layer in layers]
        if not layers:
            if depths:  # none of depths='s names is a layer it scales (misspelt): named, as where some are
                self.state = {}
                self._refuse_unused_depths(plain, [], depths, chosen)
            raise ValueError("no layer to scale: a model without input_depths (or depth_layers) names no layer of its own, so "
                             "pass layers=[...] (their depths are then traced from the data flow, or given as "
                             "depths={layer: tensor})")
        self.momentum = momentum
        self.conn = None if conn is None else model_connectome(
            model, conn, "BandGradientScaler", "which synapses' gradients the band sizes count")
        self.state: Dict[str, dict] = {}
        self._handles = []
        traces = {}  # the model traced once for all its layers (where depths are traced), not once per layer
        try:
            for layer in layers:
                name, mod, w = find_weight(plain, layer)  # by any of its names; named by its first
                if name in self.state:  # given twice (or by two names): one hook, or its gradient is scaled twice
                    continue
                rows = resolve_call_depths(plain, name, self._given_depths(plain, mod, layer, depths), example, traces)
                groups, transposed = int(getattr(mod, "groups", 1)), bool(getattr(mod, "transposed", False))
                wds = torch.stack([weight_depths(w.shape, d, groups, transposed) for d in rows])
                uniq = torch.unique(wds)
                st = {"name": name, "bands": uniq, "hooked": self._hooked(uniq), "split": False, "splitting": False,
                      "warned": False, "log_typical": None, "seen": None, "scale": None, "module": mod,
                      "shape": tuple(w.shape)}
                self.state[name] = st
                if not st["hooked"]:  # one band: scale 1; an index of zeros that takes no memory, for its layout
                    st["index"] = torch.zeros((), dtype=torch.long).expand(wds.shape)
                    st["calls"] = 0  # counted (a pre-hook adding 1), to warn of calls its depths have no row for
                    self._handles.append(mod.register_forward_pre_hook(lambda *_, st=st: st.__setitem__("calls", st["calls"] + 1)))
                    continue
                st["index"] = index = torch.searchsorted(uniq, wds.reshape(len(rows), -1)).view(wds.shape).to(w.device)
                st["split"] = split = not bool((index == index[0]).all())  # calls reading other bands: scaled apart
                st["recorder"] = CallRecorder(mod, keep_inputs=split)
                st["tied"] = TiedReads(plain, mod, w)  # an Embedding tied to a head reads its weight too
                self._handles += [st["recorder"], st["tied"]]
                self._attach(st, w)
            self._refuse_unused_depths(plain, layers, depths, chosen)
            # a layer's calls are those of the model's latest forward (one without a backward leaves none behind)
            self._handles.append(model.register_forward_pre_hook(self._new_forward))
            if len(self._hooked_layers()) < len(self.state):
                self._handles.append(model.register_forward_hook(self._forward_done))
            self._check_processes_agree()
        except BaseException:
            self.remove()  # no hook left on a model the scaler refused
            raise

    @staticmethod
    def _given_depths(model, module, layer: str, depths: dict):
        """The depths ``depths`` gives ``module`` (``layer`` in ``layers=``) under any of its names, with or
        without ``.weight`` (one held under several, ``self.out = self.head``, as ``layers=`` takes it); None
        where it gives none. Other depths under two of its names are refused: which to scale by is unknown."""
        names = dict.fromkeys([layer] + [f"{n}{w}" for n in module_names(model, module) for w in ("", ".weight")])
        given = [(n, depths[n]) for n in names if n in depths]
        for n, d in given[1:]:
            if not torch.equal(torch.as_tensor(d), torch.as_tensor(given[0][1])):
                raise ValueError(f"BandGradientScaler: depths= gives the layer {layer!r} other depths under {given[0][0]!r} "
                                 f"and under {n!r}, two names of one module: give its depths once")
        return given[0][1] if given else None

    def _refuse_unused_depths(self, model, layers, depths: dict, chosen: bool) -> None:
        """Refuse ``depths=`` entries that no scaled layer takes where the layer meant would be scaled by
        traced or ``input_depths`` depths, or not at all, with no word: a name no module of ``model`` has
        (misspelt), and without ``layers=`` (``chosen`` False: the layers are found, those named in
        ``depths=`` among them) one of a module it cannot scale. With ``layers=`` given, depths of a
        layer of the model left out of it are the caller's choice (one dict of depths for a subset)."""
        taken = set(layers)
        for st in self.state.values():  # a layer under any of its names, with or without .weight
            taken.update(f"{n}{w}" for n in module_names(model, st["module"]) for w in ("", ".weight"))
        known = {f"{n}{w}" for n, _ in model.named_modules(remove_duplicate=False) for w in ("", ".weight")}
        unused = [k for k in depths if k not in taken and (not chosen or k not in known)]
        if unused:
            scalable = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
            named = {f"{n}{w}" for n in scalable for w in ("", ".weight")}
            left = [k for k in unused if k in named]  # layers it can scale, left out of the model's depth_layers
            wrong = [k for k in unused if k not in named]
            why = ([f"{wrong[:6]}: a misspelt name, or a module without a Linear or convolution weight; name each layer "
                    f"as model.named_modules() does, one of {scalable[:12]}"] if wrong else []) + \
                  ([f"{left[:6]}: layers left out of the model's depth_layers, which are the layers scaled without "
                    "layers=; pass layers= naming every layer to scale"] if left else [])
            raise ValueError(f"BandGradientScaler: depths= gives depths for {unused[:6]}, but no layer it scales is "
                             f"named so (it scales {list(self.state)[:12] or 'no layer'}): {'; '.join(why)}")

    @staticmethod
    def _layers_with_depths(model, depths):
        names = []
        for n, m in model.named_modules(remove_duplicate=False):  # depths may name a layer by any of its names
            # (a transposed convolution too: weight_depths reads its (in, out/groups, *kernel) weight)
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                if n in depths or f"{n}.weight" in depths:  # (NAME.weight too, as _given_depths reads it)
                    names.append(n)
                    continue
                if hasattr(model, "input_depths"):
                    try:
                        model.input_depths(n)
                    except (KeyError, ValueError):
                        continue
                    names.append(n)
        return names

    @staticmethod
    def _hooked(bands: torch.Tensor) -> bool:
        """Whether a layer of these bands gets a gradient hook: one of several bands. One band's scale is
        ``exp(common - typical)`` with ``common`` the mean of that one running size: exactly 1 (the
        running sizes are finite: :meth:`load_state_dict` refuses others), so its hook, statistics and
        all-reduce would change nothing."""
        return len(bands) > 1

    def _hooked_layers(self):
        """The states of the layers that have a gradient hook (several bands)."""
        return [st for st in self.state.values() if st["hooked"]]

    def _attach(self, st, weight: nn.Parameter) -> None:
        """Put the layer's gradient hook on ``weight``, remembering which tensor it is on: a hook lives
        on the tensor, so a weight replaced later (another Parameter, or one whose tensor was swapped
        by ``torch.utils.swap_tensors``) takes no hook with it (see :meth:`_check_weights`)."""
        st["weight"], st["tensor"] = weight, weight._cdata  # _cdata: the C++ tensor, which a swap replaces
        st["handle"] = weight.register_hook(self._hook(st, weight))

    @staticmethod
    def _layer_weight(st):
        """The Parameter the layer's gradient hook belongs on now: its module's ``weight``, or the hooked
        Parameter where ``weight`` is a plain tensor: computed from it at each call (torch.nn.utils.prune's
        ``weight_orig``, a parametrization's ``original``), which gets the gradient still, or put there for
        one call (``torch.func.functional_call``); a module cannot be given one otherwise."""
        w = getattr(st["module"], "weight", None)
        return st["weight"] if isinstance(w, torch.Tensor) and not isinstance(w, nn.Parameter) else w

    def _check_weights(self) -> None:
        """Move the hooks of layers whose weight was replaced since they were put on (their gradients
        would go by unscaled, and the running sizes stop, silently) onto the current weights, with a
        warning; a layer whose weight is gone or of another shape is refused."""
        replaced = [st for st in self._hooked_layers()
                    if (w := self._layer_weight(st)) is not st["weight"] or w._cdata != st["tensor"]]
        for st in replaced:
            w = self._layer_weight(st)
            if not isinstance(w, nn.Parameter) or tuple(w.shape) != st["shape"]:
                now = f"a {type(w).__name__} of shape {tuple(w.shape)}" if isinstance(w, torch.Tensor) else repr(w)
                raise ValueError(f"BandGradientScaler: the weight of {st['name']!r} was replaced by {now}, but the "
                                 f"scaler was built for a Parameter of shape {st['shape']}: build a new scaler for "
                                 "the model as it is now (scaler.remove() the old one)")
        for st in replaced:
            st["handle"].remove()
            w = self._layer_weight(st)
            if w is st["weight"] and w._backward_hooks is not None:
                # swapped in place: the Parameter keeps its dict of hooks, but its new tensor has no autograd
                # hook calling them; setting the dict again puts one there (the dict's other hooks, lost alike,
                # come back with it)
                w._backward_hooks = w._backward_hooks
            self._attach(st, w)
        if replaced:
            warn_user(f"BandGradientScaler: the weights of {[st['name'] for st in replaced]} were replaced since the "
                      "scaler hooked them (model.to('meta') then to_empty(), load_state_dict(assign=True), a conversion "
                      "under torch.__future__.set_swap_module_params_on_conversion(True)), which drops a tensor's "
                      "gradient hooks: the hooks are moved onto the new weights, their running sizes kept. Build the "
                      "scaler after replacing weights to avoid this warning (and an optimizer, which must hold the new "
                      "weights)")

    def _hook(self, st, weight: torch.Tensor):
        weight_id = id(weight)

        def scale(grad: torch.Tensor) -> Optional[torch.Tensor]:
            if scaler_suspended(weight_id) or st["splitting"] or grad.is_meta:  # a diagnostic measures the raw
                return None  # gradient; or this hook is splitting it into the calls' parts (autograd.grad runs
            # the hooks); or a model on the meta device has no gradient values to size (nor to move the index to)
            st["tied"].check(st["name"], "BandGradientScaler", "scale")  # before any state moves
            parts, index = self._call_parts(st, grad, weight)
            a = (parts[0].detach().abs().reshape(-1) if len(parts) == 1  # (cat would copy the one part)
                 else torch.cat([p.detach().abs().reshape(-1) for p in parts]))
            nz = (a > 0) & torch.isfinite(a)  # an inf made the running state inf and every later scale NaN
            live = live_mask(self.conn, weight, a.device)  # else the one attached
            if live is not None:  # a pruned position's gradient is no synapse's
                nz &= live.expand(len(parts), *live.shape).reshape(-1)
            logs, cnt = self._all_processes(self._band_stats(a, nz, index.reshape(-1), len(st["bands"])))
            have = cnt > 0
            cur = torch.where(have, logs / cnt.clamp_min(1), torch.zeros_like(logs))
            prev, seen = self._running_on(st, cur.device)
            # a band's first nonzero gradient sets its typical size; later ones move it by the
            # momentum; a band never seen with one (dead, pruned) takes no part in the common size
            new = torch.where(have & seen, self.momentum * prev + (1 - self.momentum) * cur, torch.where(have, cur, prev))
            seen = seen | have
            st["log_typical"], st["seen"] = new, seen
            st["scale"] = self._scale(new, seen)
            s = st["scale"].to(grad.dtype)
            scaled = parts[0] * s[index[0]]  # (not sum(): its 0 + is one more pass over the gradient)
            for p, i in zip(parts[1:], index[1:]):
                scaled = scaled + p * s[i]
            return scaled

        return scale

    @staticmethod
    def _band_stats(a: torch.Tensor, nz: torch.Tensor, flat: torch.Tensor, nb: int) -> torch.Tensor:
        """Per band (``flat``: the band of each entry of ``a``), the sum of ``log a`` over the entries
        ``nz`` marks and how many they are: a float64 ``(2, nb)``. An index_add_ over all the entries
        for each (those left out add exact zeros, in the same order), no boolean indexing: that copied
        the entries out three times, and cost a small model's step several times over. One float64
        copy of the entries serves both sums (and a bool per entry): a layer of millions of synapses
        takes 9 bytes per entry here, not the 32 that separate log, masked, count and stacked tensors did."""
        stats = torch.zeros(2, nb, dtype=torch.float64, device=a.device)
        vals = a.double().log_().masked_fill_(~nz, 0.0)  # (log |0| = -inf, log NaN: masked out)
        stats[0].index_add_(0, flat, vals)
        stats[1].index_add_(0, flat, vals.copy_(nz))  # the count: 1.0 for each entry kept
        return stats

    @staticmethod
    def _all_processes(stats: torch.Tensor) -> torch.Tensor:
        """``stats`` summed over every process of the group (itself on one process). The hook precedes
        DDP's gradient reduction: the bands are sized by every process's gradients, so that all apply
        the same scales (see the class docstring); a CPU model's through the GPU under NCCL."""
        if not is_distributed():
            return stats
        reduced = stats.to(collective_device(stats))
        dist.all_reduce(reduced)
        return reduced.to(stats.device)

    @staticmethod
    def _scale(log_typical: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Each band's multiplier: the common size (the mean log size of the bands seen) over its own;
        1 for a band not yet seen."""
        known = log_typical[seen]
        common = known.mean() if known.numel() else log_typical.new_zeros(())
        return torch.where(seen, (common - log_typical).exp(), torch.ones_like(log_typical))

    @staticmethod
    def _index_on(st, device: torch.device) -> torch.Tensor:
        """The layer's band index on ``device``: the model may have moved since the last gradient, so
        the index is moved there at the first gradient there (a no-op for the next ones). One copy
        is kept: an int64 per weight entry and call, it is twice an fp32 weight's size, and a model
        moved off a device (``.cpu()`` to free the GPU) must not leave it behind there."""
        if st["index"].device != device:
            st["index"] = st["index"].to(device)
        return st["index"]

    @staticmethod
    def _running_on(st, device: torch.device):
        """The layer's running log sizes and which bands have had one, on ``device`` (the model may
        have moved since the last gradient, or the state have been loaded on the CPU); zeros and
        none seen before the first gradient."""
        if st["log_typical"] is None:
            nb = len(st["bands"])
            return torch.zeros(nb, dtype=torch.float64, device=device), torch.zeros(nb, dtype=torch.bool, device=device)
        return st["log_typical"].to(device), st["seen"].to(device)

    def _call_parts(self, st, grad, weight):
        """The parts of ``grad`` to scale apart and each part's band index: the whole gradient where
        every call reads the same bands, else each call's part (they add up to ``grad``)."""
        index, recorder = self._index_on(st, grad.device), st["recorder"]
        try:
            if not st["split"]:
                calls = len(recorder.calls)
                if len(index) == 1 and calls > 1 and not st["warned"]:
                    st["warned"] = True
                    warn_user(f"BandGradientScaler: {st['name']!r} is called {calls} times in each forward (weight "
                              "sharing), but its depths describe its inputs once: every call's part of the gradient "
                              "is scaled by the bands of those depths. Pass depths={layer: rows} with one row per "
                              "call, in call order, to give each call its own")
                return [grad], index[:1]  # every call reads the same bands: one scale serves their sum
            if not recorder.calls:
                raise ValueError(
                    f"BandGradientScaler: a gradient of {st['name']!r} arrived, but no forward of the model has called it "
                    "since the last backward through it: a second backward over one forward (retain_graph=True), or a "
                    "forward of a part of the model (its own forward is what records the calls to split); add up the "
                    "losses and run one backward per forward of the model")
            if len(recorder.calls) != len(index):
                raise ValueError(
                    f"BandGradientScaler: {st['name']!r} was called {len(recorder.calls)} time(s) in the model's latest "
                    f"forward, but its depths have {len(index)} rows (one per call), so which call reads which depths "
                    "is unknown: pass depths={layer: rows} with one row per call of this forward, in call order (a "
                    "call in train mode only is not in the traced, eval-mode graph; an op reading the weight outside the module's "
                    "calls, F.linear(x, layer.weight), is in it but no call: scale a layer whose weight only its own calls read)")
            reentrant = (" (a reentrant torch.utils.checkpoint runs the forward so, to run it again in the backward: "
                         "pass use_reentrant=False)" if any(c["no_grad"] for c in recorder.calls) else "")
            st["splitting"] = True
            parts = recorder.gradient_parts(weight, "BandGradientScaler")
        finally:
            st["splitting"] = False
            recorder.clear()  # the calls' inputs are not kept beyond this backward
        return parts_adding_up("BandGradientScaler", st["name"], parts, grad,
                               "scale a layer whose weight only its own calls read, and run one backward per forward "
                               "of the model (the calls split are the latest forward's); a call under torch.no_grad() "
                               f"contributes no part{reentrant}"), index

    @eager  # a compiled forward runs the model's hooks: traced, the weights' identities read as replaced
    def _new_forward(self, *_) -> None:
        """A forward of the model begins: the layers' calls recorded before belong to an earlier one;
        a weight replaced since the last one gets the hook it lost (:meth:`_check_weights`). Run eagerly
        even where ``torch.compile(model)`` (built on the module inside) runs it: traced, the weights read as
        replaced, warned of and re-hooked at every forward."""
        self._check_weights()
        for st in self.state.values():
            if st["hooked"]:
                st["recorder"].clear()
                st["tied"].clear()
            else:
                st["calls"] = 0

    def _forward_done(self, *_) -> None:
        """A forward of the model ended: a layer of one band it called more times than its depths have rows
        (a call in train mode only, or depths given once for a layer called several times) has calls of
        unknown depths, which may read other bands: warned once, as a hooked layer's hook warns (it scales
        such a layer by its one band, 1, all the same). A forward under ``torch.no_grad()`` is no concern."""
        if not torch.is_grad_enabled():
            return
        for st in self.state.values():
            if not st["hooked"] and st["calls"] > len(st["index"]) and not st["warned"]:
                st["warned"] = True
                warn_user(f"BandGradientScaler: {st['name']!r} is called {st['calls']} times in a forward, but its "
                          f"depths describe {len(st['index'])} call(s), all of one depth ({int(st['bands'][0])}), so "
                          "it is left unscaled (scale 1); the other calls may read signals of other depths (a call "
                          "in train mode only is not in the traced, eval-mode graph). Pass depths={layer: rows} with "
                          "one row per call, in call order, to scale each call by its own bands")

    def _check_processes_agree(self) -> None:
        """Under a process group of more than one process, refuse (on every process alike) band layouts that
        differ between the processes: each process all-reduces the statistics of its layers of several bands, one
        all-reduce per layer and backward, so a layer hooked on one process and not on another (or of other
        bands) pairs the all-reduces of other layers (an abort under gloo, a hang under NCCL)."""
        if not is_distributed():
            return
        mine = {n: st["bands"].tolist() for n, st in self.state.items()}
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        other = next((r for r, e in enumerate(every) if e != every[0]), None)
        if other is not None:
            diff = sorted(n for n in set(every[0]) | set(every[other])
                          if every[0].get(n) != every[other].get(n))
            raise ValueError(
                "BandGradientScaler: the processes found other depth bands for the layers "
                + ", ".join(f"{n!r} (process 0: {every[0].get(n)}, process {other}: {every[other].get(n)})"
                            for n in diff[:4])
                + ", so their per-layer all-reduces would not pair up (a hang under NCCL): give every process the "
                "same layers= and depths= (depths computed from the model, not from each process's data), or the same "
                "example= to trace them with")

    def scales(self) -> Dict[str, Dict[int, float]]:
        """Current multiplier per band of each layer (empty before the first backward pass); a layer of one
        band: 1.0 from the start (it has no hook, its gradient is left as it is)."""
        return {
            n: ({int(st["bands"][0]): 1.0} if not st["hooked"] else {} if st["scale"] is None
                else {int(b): float(s) for b, s in zip(st["bands"], st["scale"].cpu())})
            for n, st in self.state.items()
        }

    def state_dict(self) -> dict:
        """The running band sizes of every layer, with the band layout they belong to, as plain CPU
        tensors and ints (``torch.load(..., weights_only=True)`` reads them back): save it with the
        model's, the optimizer's and the connectome's, so a resumed run scales as the saved one. A layer
        of one band has the same entries, its running sizes None (as before a first gradient: a version
        that hooked such a layer starts them afresh, its scale 1 all the same) or those a loaded state
        gave it, kept as they were."""
        def cpu(t):
            return None if t is None else t.detach().to("cpu", copy=True)

        return {"layers": {n: {**self._layout(st), "log_typical": cpu(st["log_typical"]), "seen": cpu(st["seen"])}
                           for n, st in self.state.items()}}

    def load_state_dict(self, sd: Mapping) -> None:
        """Restore the running band sizes saved by :meth:`state_dict`. A state of other layers or
        another band layout (other depths, another model) is refused, and nothing is changed. The
        saved run's momentum is not checked: this scaler's own moves the sizes from here on. A state
        whose layers carry a wrapper's prefix (``module.NAME``: saved before a scaler built on a DDP
        model took the module inside's names) loads as ``NAME``, one prefix for all its layers and
        only where that names more of this scaler's layers, as a connectome's state loads. Running sizes
        that are not finite where their band was seen (no scaler saves them: NaN and inf gradient entries
        take no part in them, since before states were saved; a damaged or edited state's made every
        later scale NaN) are refused. A layer of one band takes its running sizes
        as saved (a version that hooked it kept some) and never moves them: its scale is 1 either way."""
        if not isinstance(sd, Mapping) or not isinstance(sd.get("layers"), Mapping):
            raise ValueError("not a BandGradientScaler state_dict: it has no 'layers' entry (save scaler.state_dict())")
        saved = _stripped(sd["layers"], _wrapper_prefix(sd["layers"], self.state))
        if set(saved) != set(self.state):
            raise KeyError(f"BandGradientScaler.load_state_dict: the state is of layers {sorted(saved)}, this scaler "
                           f"scales {sorted(self.state)}: build it with layers= (and depths=) as the saved run did")
        loaded = {}
        for n, st in self.state.items():
            ours, theirs = self._layout(st), saved[n]
            if not isinstance(theirs, Mapping):
                raise ValueError(f"BandGradientScaler.load_state_dict: the state of layer {n!r} is a "
                                 f"{type(theirs).__name__}, not a mapping: save scaler.state_dict()")
            diff = [k for k in ours if not _same(ours[k], theirs.get(k))]
            if diff:
                raise ValueError(
                    f"BandGradientScaler.load_state_dict: layer {n!r} was saved with another band layout (its "
                    + ", ".join(f"{k} {_shown(theirs.get(k))}, here {_shown(ours[k])}" for k in diff)
                    + "): its depths differ (another model, or other depths=); build the scaler as the saved run did")
            lt, seen, nb = theirs.get("log_typical"), theirs.get("seen"), len(st["bands"])
            if lt is None and seen is None:  # saved before its first gradient
                loaded[n] = (None, None, None)
                continue
            if not (isinstance(lt, torch.Tensor) and isinstance(seen, torch.Tensor) and lt.shape == (nb,)
                    and seen.shape == (nb,) and lt.is_floating_point() and seen.dtype == torch.bool):
                raise ValueError(f"BandGradientScaler.load_state_dict: the running sizes of layer {n!r} are not a float "
                                 f"'log_typical' and a bool 'seen' of one entry per band ({nb}): save scaler.state_dict()")
            lt, seen = lt.detach().to(torch.float64, copy=True), seen.detach().clone()
            if not bool(torch.isfinite(lt[seen.to(lt.device)]).all()):
                raise ValueError(f"BandGradientScaler.load_state_dict: the running sizes of layer {n!r} are not finite "
                                 f"({lt.tolist()}, where 'seen' marks a band), so its scales would be NaN; no scaler "
                                 "saves such sizes (NaN and inf gradient entries take no part in them), so the state is "
                                 "damaged or was edited: load the checkpoint without its scaler state (the sizes restart "
                                 "from the next batch)")
            loaded[n] = (lt, seen, self._scale(lt, seen))
        for n, (lt, seen, scale) in loaded.items():  # the hooks move them to the gradients' device
            self.state[n].update(log_typical=lt, seen=seen, scale=scale)

    @staticmethod
    def _layout(st) -> dict:
        """What a layer's running sizes belong to: its bands (depth values), how many calls, its
        weight's shape, and how many weight entries each call has in each band."""
        index, nb = st["index"], len(st["bands"])
        entries = (torch.stack([torch.bincount(i.reshape(-1), minlength=nb) for i in index]).cpu() if nb > 1
                   else torch.full((len(index), 1), index[0].numel(), dtype=torch.long))  # (bincount: a copy)
        return {"bands": st["bands"].detach().to("cpu", copy=True), "calls": len(index),
                "weight_shape": list(index.shape[1:]), "band_entries": entries}

    def remove(self) -> None:
        """Take the gradient hooks and the call recorders off the model."""
        for h in self._handles + [st.pop("handle") for st in self.state.values() if "handle" in st]:
            h.remove()
        self._handles.clear()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool((a == b.to(a.device)).all())
    return a == b


def _shown(v):
    return v.tolist() if isinstance(v, torch.Tensor) else v
