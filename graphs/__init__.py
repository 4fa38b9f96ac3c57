"""graphs: the connectome as a graph (tracing, building, exporters, analysis)."""
