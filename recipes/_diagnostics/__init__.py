"""The parts of ``recipes/diagnostics.py`` that are not a command: ``folder`` (the files each command
writes into its --output_dir, and what becomes of an earlier run's files there)."""
