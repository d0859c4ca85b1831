"""Imports every family's parity module (declared in batchforge/families.py) so each registers
itself with the gate."""

import importlib

from batchforge.families import FAMILIES

for _family in FAMILIES.values():
    importlib.import_module(_family.parity)
