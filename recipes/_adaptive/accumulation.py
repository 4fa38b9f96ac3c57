"""Gradient accumulation as Accelerate runs it: ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` (which
``accelerate launch`` sets for DeepSpeed) read over the recipe's --gradient_accumulation_steps, so
that what runs is what config.yaml records."""
from __future__ import annotations

import os
from typing import Optional

from adaptive.config import ConfigError, given_keys


# what Accelerate reads over its gradient_accumulation_steps argument (accelerate launch sets it for DeepSpeed)
_ACCUM_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"


def _env_accumulation() -> Optional[int]:
    """``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``, which Accelerate reads over the Accelerator's argument
    (``accelerate launch`` sets it for DeepSpeed): None where it is unset, refused where Accelerate's
    ``int()`` would fail on it (blank too) or it is below 1."""
    raw = os.environ.get(_ACCUM_ENV)
    if raw is None:
        return None
    k = int(raw.strip()) if raw.strip().isdigit() else None  # (as Accelerate's int(): no sign, no fraction)
    if k is None or k < 1:
        raise ConfigError(f"{_ACCUM_ENV}={raw!r} in the environment is no whole number >= 1, and Accelerate reads it "
                          f"as the gradient accumulation steps: unset it (--gradient_accumulation_steps sets them)")
    return k


def _accumulation_from_env(cfg) -> None:
    """While a command line (and ``--config`` file) is parsed: where the environment sets
    ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``, the run takes it as --gradient_accumulation_steps when
    no one gave the option, and is refused where the option says otherwise, or where the mode
    accumulates nothing: either would run other than the option says. A config built in code or
    loaded from a file keeps its value (:func:`recipes._adaptive.train.training_function` refuses it if
    Accelerate would run another)."""
    given_all = given_keys()
    if given_all is None:  # not parsing a command line: what the file or the code says stays
        return
    k = _env_accumulation()
    if k is None:
        return
    given = given_all.get("gradient_accumulation_steps")
    if cfg.mode == "mask_only":
        if k != 1:
            raise ConfigError(f"{_ACCUM_ENV}={k} in the environment asks Accelerate to accumulate gradients, which mode "
                              "mask_only never does (it trains no weight): unset it")
        return
    if given is not None and k != cfg.gradient_accumulation_steps:
        raise ConfigError(f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} (from {given}) and {_ACCUM_ENV}"
                          f"={k} in the environment disagree, and Accelerate would run {k}: unset {_ACCUM_ENV}, or "
                          f"give --gradient_accumulation_steps {k}")
    cfg.gradient_accumulation_steps = k


def _refuse_other_accumulation(cfg, ran: int) -> None:
    """A config built in code (or loaded) whose gradient_accumulation_steps is not what Accelerate took
    from the environment: refused before anything runs, rather than run and recorded otherwise."""
    if ran != cfg.gradient_accumulation_steps:
        mode = " (mode mask_only accumulates nothing)" if cfg.mode == "mask_only" else ""
        raise ConfigError(f"gradient_accumulation_steps is {cfg.gradient_accumulation_steps}{mode}, but {_ACCUM_ENV}="
                          f"{ran} in the environment makes Accelerate run {ran}: unset {_ACCUM_ENV}"
                          + ("" if mode else f", or set gradient_accumulation_steps={ran}"))
