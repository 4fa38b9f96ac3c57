"""The parts of ``recipes/prune_pretrained.py``, one concept a module (the script is the entry point
and re-exports every name it held before the split): ``options`` (DEFAULTS, the parser, --remove's
targets), ``checks`` (the options' checks before anything runs), ``parse`` (parse_args), ``folder``
(the run folder, config.yaml, Ctrl-C's hint), ``resume`` (the settings a --resume must share),
``builders`` (model, estimator, Accelerator, the report's train sample), ``run`` (main, the
optimisation, the final report and the outputs), ``plot`` (curves.png) and ``report`` (the table and
the Splits note's words)."""
