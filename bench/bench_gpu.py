"""Superseded by ``bench/gpu.py`` (issue 15), which measures SD 1.5, SDXL, FLUX.1 and Wan 2.1 side by side.

    python bench/bench_gpu.py [gpu.py's flags]   # = python bench/gpu.py --models sd15 [flags]

Kept so that the command of the first GPU measurements (bench/results/gpu-2026-11-26-*.md) still runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import main

if __name__ == "__main__":
    sys.exit(main(["--models", "sd15", *sys.argv[1:]]))
