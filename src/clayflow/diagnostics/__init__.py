"""Checks of trained models: densities on grids and their integrals, and ``verify`` (round
trips, log-dets against brute-force Jacobians layer by layer, mass, samples). More to come:
anomaly scores."""

from clayflow.diagnostics.density import box_mass, grid_log_prob, integrated_mass
from clayflow.diagnostics.report import Check, Report
from clayflow.diagnostics.verification import verify

__all__ = ["Check", "Report", "box_mass", "grid_log_prob", "integrated_mass", "verify"]
