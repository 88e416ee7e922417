"""Accuracy broken down by how many specialists cover the true class (paper, table 4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["CoverageRow", "CoverageReport", "coverage_table"]


@dataclass(frozen=True)
class CoverageRow:
    """Test rows whose true class is covered by ``n_covering`` specialists."""

    n_covering: int
    count: int
    generalist_accuracy: float
    ensemble_accuracy: float
    relative_improvement: float  # (ensemble - generalist) / generalist; nan if 0 / 0


@dataclass(frozen=True)
class CoverageReport:
    """Table 4 of Hinton et al. (2015) plus totals.

    Attributes
    ----------
    rows : tuple of CoverageRow
        One per number of covering specialists present in the data, ascending.
    overall : CoverageRow
        Every labeled row (``n_covering = -1``).
    covered : CoverageRow
        Rows whose true class has at least one specialist (``n_covering = -1``).
    """

    rows: tuple[CoverageRow, ...]
    overall: CoverageRow
    covered: CoverageRow

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types, for JSON."""
        return {
            "rows": [asdict(r) for r in self.rows],
            "overall": asdict(self.overall),
            "covered": asdict(self.covered),
        }

    def to_markdown(self) -> str:
        """The table as Markdown."""
        lines = [
            "| # specialists covering | test rows | generalist acc | ensemble acc | rel. change |",
            "|---:|---:|---:|---:|---:|",
        ]
        named = [(str(r.n_covering), r) for r in self.rows]
        named += [("covered (>= 1)", self.covered), ("all", self.overall)]
        for name, r in named:
            lines.append(
                f"| {name} | {r.count} | {r.generalist_accuracy:.4f} | "
                f"{r.ensemble_accuracy:.4f} | {100 * r.relative_improvement:+.2f}% |"
            )
        return "\n".join(lines)


def _row(n_covering: int, gen_ok: np.ndarray, ens_ok: np.ndarray) -> CoverageRow:
    count = len(gen_ok)
    gen = float(gen_ok.mean()) if count else float("nan")
    ens = float(ens_ok.mean()) if count else float("nan")
    rel = (ens - gen) / gen if count and gen > 0 else float("nan")
    return CoverageRow(n_covering, count, gen, ens, rel)


def coverage_table(
    y_codes: np.ndarray,
    generalist_codes: np.ndarray,
    ensemble_codes: np.ndarray,
    subsets: list[np.ndarray],
) -> CoverageReport:
    """Accuracy of generalist and ensemble by number of specialists covering the truth.

    Parameters
    ----------
    y_codes : ndarray of shape (n,)
        True class codes (labeled rows only).
    generalist_codes, ensemble_codes : ndarray of shape (n,)
        Predicted class codes.
    subsets : list of ndarray of int
        Each specialist's class codes; a class is covered ``k`` times when ``k``
        subsets contain it.
    """
    y_codes = np.asarray(y_codes, dtype=np.int64)
    n_classes = int(max([y_codes.max(initial=0)] + [int(np.max(s)) for s in subsets])) + 1
    cover = np.zeros(n_classes, dtype=np.int64)
    for subset in subsets:
        cover[np.asarray(subset, dtype=np.intp)] += 1
    n_cov = cover[y_codes]  # (n,)
    gen_ok = np.asarray(generalist_codes) == y_codes
    ens_ok = np.asarray(ensemble_codes) == y_codes
    rows = tuple(_row(int(k), gen_ok[n_cov == k], ens_ok[n_cov == k]) for k in np.unique(n_cov))
    return CoverageReport(
        rows=rows,
        overall=_row(-1, gen_ok, ens_ok),
        covered=_row(-1, gen_ok[n_cov > 0], ens_ok[n_cov > 0]),
    )
