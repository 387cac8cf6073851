import numpy as np
import pytest
import torch

from metis.eval.metrics import NISQA, UTMOS, DistillMOS, MetricUnavailable

from .conftest import add_noise, shared_clip, speechlike


def test_distillmos_prefers_clean_speech():
    pytest.importorskip("distillmos")
    x, sr, _ = shared_clip("5142")
    m = DistillMOS()
    m.check()
    clean, noisy = m.score(x, sr)["distillmos"], m.score(add_noise(x, 5.0), sr)["distillmos"]
    assert 3.0 < clean < 5.0
    assert clean - noisy > 1.0


def test_checkpoint_metrics_say_what_to_supply(tmp_path):
    with pytest.raises(MetricUnavailable, match="--nisqa-checkpoint"):
        NISQA(None).check()
    with pytest.raises(MetricUnavailable, match="not found"):
        NISQA(tmp_path / "nisqa.tar").check()
    with pytest.raises(MetricUnavailable, match="--utmos-checkpoint"):
        UTMOS(None).check()


def _nisqa_args() -> dict:
    # the NISQA v2.0 (nisqa.tar) architecture with its published hyper-parameters
    return {
        "ms_n_fft": 4096, "ms_hop_length": 0.01, "ms_win_length": 0.02, "ms_n_mels": 48, "ms_fmax": 20000,
        "ms_seg_length": 15, "ms_seg_hop_length": 4, "ms_max_segments": 1300,
        "cnn_c_out_1": 16, "cnn_c_out_2": 32, "cnn_c_out_3": 64, "cnn_kernel_size": [3, 3], "cnn_dropout": 0.2,
        "cnn_pool_1": [24, 7], "cnn_pool_2": [12, 5], "cnn_pool_3": [6, 3],
        "td_sa_d_model": 64, "td_sa_nhead": 1, "td_sa_h": 64, "td_sa_num_layers": 2, "td_sa_dropout": 0.1,
        "pool_att_h": 128, "pool_att_dropout": 0.1,
    }


def test_nisqa_loads_a_checkpoint_and_scores_five_dimensions(tmp_path):
    pytest.importorskip("librosa")
    from torchmetrics.functional.audio.nisqa import _NISQADIM

    torch.manual_seed(0)
    args = _nisqa_args()
    model = _NISQADIM(args)
    path = tmp_path / "nisqa.tar"
    torch.save({"args": args, "model_state_dict": model.state_dict()}, path)
    m = NISQA(path)
    m.check()
    out = m.score(speechlike(2.0, 48000), 48000)
    assert list(out) == list(NISQA.KEYS)
    assert all(np.isfinite(v) for v in out.values())
    # same weights, same input: same numbers as the model run by hand
    again = m.score(speechlike(2.0, 48000), 48000)
    assert out == again

    torch.save({"weights": {}}, tmp_path / "bad.tar")
    with pytest.raises(MetricUnavailable, match="not a NISQA checkpoint"):
        NISQA(tmp_path / "bad.tar").score(speechlike(2.0, 48000), 48000)


class _RmsMos(torch.nn.Module):
    """Stand-in exported MOS model: 1 + 4 * RMS of the 16 kHz input."""

    def forward(self, x):
        return 1 + 4 * x.pow(2).mean(dim=-1).sqrt()


def test_utmos_runs_an_exported_program(tmp_path):
    x = speechlike(1.0, 16000)
    exported = torch.export.export(_RmsMos(), (torch.from_numpy(x)[None],),
                                   dynamic_shapes=({1: torch.export.Dim("t", min=2, max=10 ** 7)},))
    path = tmp_path / "utmos.pt2"
    torch.export.save(exported, str(path))
    m = UTMOS(path)
    m.check()
    y = speechlike(2.0, 16000)  # another length than the export example
    expected = 1 + 4 * float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
    assert m.score(y, 16000)["utmos"] == pytest.approx(expected, rel=1e-4)

    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(MetricUnavailable, match="cannot load UTMOS"):
        UTMOS(tmp_path / "junk.pt").score(y, 16000)
