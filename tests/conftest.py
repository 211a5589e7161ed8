import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))
sys.path.insert(0, str(ROOT/'tests'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')
# caches, neighbour files and weights the tests write go to a throw-away home, not the user's ~/.cache/usseg
os.environ.setdefault('USSEG_HOME', tempfile.mkdtemp(prefix='usseg-test-home-'))


@pytest.fixture(scope='session')
def root() -> Path: return ROOT


def shared_data() -> Path | None:
    "The real-data folder: `$USSEG_SHARED_DATA`, else `../shared/data` beside the repository."
    p = Path(os.environ.get('USSEG_SHARED_DATA', ROOT.parent/'shared'/'data'))
    return p if p.is_dir() else None
