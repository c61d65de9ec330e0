"""Checks of trained models: densities on grids (more to come: verification, anomaly scores)."""

from clayflow.diagnostics.density import grid_log_prob, integrated_mass

__all__ = ["grid_log_prob", "integrated_mass"]
