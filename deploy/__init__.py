"""Deployment: a Triton model repository and self-contained, verifiable bundles of validated artifacts.

The last stage: it reads what export, calibration, engines and parity wrote and imports none of
them (tests/test_stage_order.py); the runtime reads bundles without importing this package.
"""
