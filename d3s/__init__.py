"""d3s: D3S dataset distillation ("Large Scale Dataset Distillation with Domain Shift", ICML 2024)."""

__version__ = "0.1.0"
