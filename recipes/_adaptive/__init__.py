"""The parts of ``recipes/adaptive.py``, one concept a module (the script is the entry point and
re-exports the names its users reach for): ``config`` (RunConfig, parse_args) and the checks it
runs (``checks``, ``derived_keys``, ``accumulation``); ``builders`` (data, model, optimizer,
connectome, controller); ``folder`` (the run folder, its lock, config.yaml, Ctrl-C's hint);
``resume``; ``precision``; ``train`` (training_function and the train-mode loop);
``mask_only_run``; ``report`` (the outputs, summary.json, RunResult); ``notes`` (the summary's
notes and warnings)."""
