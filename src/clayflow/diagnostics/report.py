"""What ``verify`` found: one ``Check`` per measured figure, and the ``Report`` that prints
them as a table (check, figure, tolerance, PASS/FAIL) or as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    """One measured figure. ``passed`` is None for a figure reported without a tolerance
    (a two-sample statistic); ``detail`` says what was measured on what, or what failed."""

    name: str
    figure: float
    tolerance: float | None
    passed: bool | None
    detail: str = ""

    @classmethod
    def within(cls, name: str, figure: float, tolerance: float, detail: str = "") -> Check:
        """A check that passes when ``figure`` is finite and at most ``tolerance``."""
        return cls(name, figure, tolerance, bool(math.isfinite(figure) and figure <= tolerance), detail)

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL``, or ``-`` for a figure without a tolerance."""
        return "-" if self.passed is None else "PASS" if self.passed else "FAIL"


@dataclass
class Report:
    """The checks of one model. ``passed``: every check with a tolerance passed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every check with a tolerance passed."""
        return all(check.passed is not False for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [check for check in self.checks if check.passed is False]

    def add(self, check: Check) -> None:
        """Append ``check`` to the report."""
        self.checks.append(check)

    def to_dict(self) -> dict:
        """``{"passed": bool, "checks": [{name, figure, tolerance, passed, detail}, ...]}``
        (non-finite figures as strings, so the result is strict JSON)."""
        rows = []
        for check in self.checks:
            row = asdict(check)
            row["figure"] = check.figure if math.isfinite(check.figure) else str(check.figure)
            rows.append(row)
        return {"passed": self.passed, "checks": rows}

    def table(self) -> str:
        """The checks as aligned text: check, figure, tolerance, result, detail."""
        rows = [("check", "figure", "tolerance", "result", "detail")]
        for check in self.checks:
            tolerance = "" if check.tolerance is None else f"<= {check.tolerance:.3g}"
            rows.append((check.name, f"{check.figure:.3g}", tolerance, check.verdict, check.detail))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
        failed = len(self.failed)
        lines.append(f"{'all checks passed' if not failed else f'{failed} check(s) FAILED'} ({len(self.checks)} figures)")
        return "\n".join(line.rstrip() for line in lines)
