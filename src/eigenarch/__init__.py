"""eigenarch: eigenspectrum analysis and width search for object detectors."""

__version__ = "0.1.0"
