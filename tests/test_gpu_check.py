"""benchmarks/gpu_check.sh on a machine without CUDA: one sentence and exit 0 (CI has no
GPU; the script's checks themselves run only where one is)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run the script")
def test_without_a_gpu_it_says_so_and_exits_0():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                            env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("gpu_check: no CUDA device here; this script needs a "
                                     "GPU (nothing checked).")
