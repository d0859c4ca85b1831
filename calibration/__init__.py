"""Precision ladder below FP32: calibration data, FP16 conversion, INT8 Q/DQ quantization."""
