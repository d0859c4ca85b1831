"""Write a simulated ptychography scan (.npz) for `batchforge run ptycho`.

    python scripts/make_ptycho_scan.py scans/demo.npz [--grid 12] [--step 8] [--photons 1e6]
"""

from batchforge.export.samples.ptycho import main

if __name__ == "__main__":
    raise SystemExit(main())
