"""The project's recipes and benchmarks: scripts, run by their paths (``python recipes/adaptive.py``).
A regular package, not a namespace one, so that ``recipes._adaptive`` (the parts of
``recipes/adaptive.py``) and ``recipes.benchmarks`` resolve here, the scripts having put the
project's root first on the path, whatever other package named ``recipes`` the path also holds."""
