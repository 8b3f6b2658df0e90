"""Eigenspectrum dynamics of training runs, I-vs-S comparison, the paper's claims, plots and
the HTML report."""

from eigenarch.report.claims import Claim, paper_claims, welch_p
from eigenarch.report.compare import Comparison, compare_spectra, map_part, map_stage
from eigenarch.report.dynamics import Criteria, RunDynamics, compute_dynamics, find_events
from eigenarch.report.html import write_report

__all__ = [
    "Claim",
    "Comparison",
    "Criteria",
    "RunDynamics",
    "compare_spectra",
    "compute_dynamics",
    "find_events",
    "map_part",
    "map_stage",
    "paper_claims",
    "welch_p",
    "write_report",
]
