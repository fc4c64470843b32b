"""Shared test setup: import paths for spaces.py, data.py and algos/*.py, and the offline data folder."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
for p in (ROOT, ROOT / "algos"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository; tests that need it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _one_thread():
    import torch
    torch.set_num_threads(1)  # tiny tensors: threads add only overhead, and CI machines are small
    yield


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> str:
    """A tiny learnable dataset as .npz (96 train / 32 test images, 16 px): smoke runs stay fast."""
    import numpy as np

    import data

    arrays = data.make_synthetic(96, 32, image_size=16)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, **arrays)
    return str(path)
