"""The PyTorch side: model zoo, torch -> ONNX export, ONNX checks, the PyTorch reference.

Importing this package does not import torch; the modules that need it import it themselves.
"""
