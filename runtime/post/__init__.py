"""NumPy post-processing: one module per family, plus the steps they share (common)."""
