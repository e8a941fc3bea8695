"""Calibration and evaluation text: sources, language mixes, the sampling protocol."""
