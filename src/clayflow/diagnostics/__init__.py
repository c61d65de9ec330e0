"""Checks of trained models: densities on grids and their integrals, and ``verify`` (round
trips, log-dets against brute-force Jacobians layer by layer, mass, samples), anomaly scores
and ``explain`` (what each layer does)."""

from clayflow.diagnostics.density import box_mass, grid_log_prob, integrated_mass
from clayflow.diagnostics.explanation import Explanation, explain
from clayflow.diagnostics.report import Check, Report
from clayflow.diagnostics.verification import verify

__all__ = ["Check", "Explanation", "Report", "box_mass", "explain", "grid_log_prob", "integrated_mass", "verify"]
