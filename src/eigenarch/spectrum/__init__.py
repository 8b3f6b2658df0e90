"""Eigenspectrum engine: streaming covariance of every feature map of a PyTorch model."""

from eigenarch.spectrum.collector import SpectrumCollector
from eigenarch.spectrum.spectra import Spectra

__all__ = ["Spectra", "SpectrumCollector"]
