"""PNG figures of runs (the only package that imports matplotlib)."""

from clayflow.plotting.plots import plot_run

__all__ = ["plot_run"]
