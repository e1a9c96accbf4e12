import os

import pytest
import torch

# Tests run on the CPU in a few threads; keep them deterministic and quiet.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
