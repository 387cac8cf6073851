import numpy as np
import pytest

from metis.eval.metrics import PLCMOS, build_metrics

from .conftest import shared_clip

pytest.importorskip("speechmos")
pytest.importorskip("onnxruntime")


def drop_packets(x: np.ndarray, sr: int, packet_ms: int, every: int) -> np.ndarray:
    """Zero every `every`-th packet of `packet_ms` ms (a lossy VoIP stream without concealment)."""
    n = sr * packet_ms // 1000
    y = x.copy()
    for k in range(0, len(x) // n, every):
        y[k * n:(k + 1) * n] = 0
    return y


@pytest.fixture(scope="module")
def plcmos():
    return PLCMOS()


def test_packet_drops_lower_plcmos_on_real_speech(plcmos):
    x, sr, _ = shared_clip("6829")
    x = x[: 4 * sr]
    clean = plcmos.score(x, sr)
    lossy = plcmos.score(drop_packets(x, sr, 40, 4), sr)  # 25 % of 40 ms packets lost
    assert set(clean) == {"plcmos"} and 1.0 <= clean["plcmos"] <= 5.0
    assert clean["plcmos"] - lossy["plcmos"] > 0.5, (clean, lossy)


def test_plcmos_is_deterministic_and_seeded(plcmos):
    x, sr, _ = shared_clip("6829")
    x = x[: 2 * sr]
    assert plcmos.score(x, sr) == plcmos.score(x, sr)
    assert PLCMOS(seed=plcmos.seed + 1).score(x, sr) != plcmos.score(x, sr)


def test_plcmos_is_built_by_name():
    metrics, notes = build_metrics(["plcmos"])
    assert [m.name for m in metrics] == ["plcmos"] and not notes
