"""Test selection by what a test needs, and shared fixtures.

Markers (declared in pyproject.toml): `slow` runs only with --runslow or TGC_SLOW=1;
`gpu` is skipped when wgpu finds no adapter (lavapipe, a CPU Vulkan driver, counts);
`h100` is skipped unless the adapter is a discrete GPU; `browser` is for the tests that
drive headless Chromium and decide for themselves whether it is there.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

# Mesa's Vulkan loader complains on stderr when this is unset (as in CI); give it a private dir.
if not os.environ.get("XDG_RUNTIME_DIR"):
    _xdg = os.path.join("/tmp", f"tgc-xdg-{os.getuid()}")
    os.makedirs(_xdg, mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = _xdg


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


@functools.cache
def webgpu_adapter_info() -> tuple[dict | None, str]:
    """(adapter info, why not) from one probe per session: info is None when there is no adapter."""
    try:
        import wgpu

        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as e:  # noqa: BLE001 -- no Vulkan loader, no driver, wgpu-native refusing: all mean "no adapter"
        return None, f"no WebGPU adapter ({type(e).__name__}: {e}); apt-get install mesa-vulkan-drivers for lavapipe"
    if adapter is None:
        return None, "no WebGPU adapter; apt-get install mesa-vulkan-drivers for lavapipe"
    return dict(adapter.info), ""


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("TGC_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or TGC_SLOW=1")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords or "h100" in item.keywords:
            info, why = webgpu_adapter_info()
            if info is None:
                item.add_marker(pytest.mark.skip(reason=why))
            elif "h100" in item.keywords and info.get("adapter_type") != "DiscreteGPU":
                item.add_marker(pytest.mark.skip(reason=f"needs a discrete GPU, adapter is {info.get('device')!r}"))


@pytest.fixture
def tmp_artifact_dir(tmp_path):
    """An empty directory to compile an artifact into; pytest removes old ones itself."""
    d = tmp_path / "artifact"
    d.mkdir()
    return d


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Artifacts and corpora go to one per-session cache (subprocesses inherit it), not ~/.cache/tgc."""
    old = os.environ.get("TGC_CACHE_DIR")
    os.environ["TGC_CACHE_DIR"] = str(tmp_path_factory.mktemp("tgc-cache"))
    yield
    if old is None:
        os.environ.pop("TGC_CACHE_DIR", None)
    else:
        os.environ["TGC_CACHE_DIR"] = old


WORDS = [*["the", "king", "queen", "love", "night", "day", "sword", "crown", "death", "life", "sweet", "fair", "foul", "heart", "blood", "honour", "lord", "lady"],
         *["thou", "thee", "thy", "art", "hath", "doth", "shall", "will", "not", "my", "your", "his", "her", "our", "good", "come", "go", "speak", "hear", "see"]]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """~40 KB of pseudo-verse from the host RNG: lines of 4-9 words, speakers every few lines."""
    from tgc import rng

    r = rng.randint(7, "test-corpus", 40_000, len(WORDS))
    n = rng.randint(7, "test-lines", 8_000, 6) + 4
    lines, i = [], 0
    for k, m in enumerate(n):
        if k % 5 == 0:
            lines.append(f"\n{WORDS[r[i % len(r)]].upper()}:")
        lines.append(" ".join(WORDS[j] for j in r[i:i + m]).capitalize() + ",")
        i += m
        if i > len(r) - 10:
            break
    p = tmp_path_factory.mktemp("corpus") / "verse.txt"
    p.write_text("\n".join(lines) + "\n")
    return p
