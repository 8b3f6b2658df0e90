"""eigenarch: eigenspectrum analysis and width search for object detectors."""

__version__ = "0.1.0"

from eigenarch import nas as _nas  # noqa: E402, F401  (adds the DetNAS backbone kind)
