"""Threshold-Consistent Margin loss (ICLR 2024): OPIS metrics, the TCM regularizer and the pipeline."""

__version__ = "0.1.0"
