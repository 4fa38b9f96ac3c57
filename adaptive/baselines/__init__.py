"""Outside references that benchmarks compare the project's methods against."""
from .edge_popup import edge_popup

__all__ = ["edge_popup"]
