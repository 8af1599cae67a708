"""Attach a preview of every Orthanc imaging study to the right OpenMRS patient record."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
