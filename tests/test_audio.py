"""metis.audio: the one place audio is read, resampled and written."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from metis import audio
from tests import SHARED_AUDIO


def tone(seconds: float, sr: int, f: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_read_downmixes_picks_a_channel_and_windows(tmp_path):
    left, right = tone(0.5, 16000), tone(0.5, 16000, 220.0)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    wav, sr = audio.read(tmp_path / "st.wav")
    assert sr == 16000 and wav.dtype == np.float32 and wav.shape == left.shape
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-6)
    np.testing.assert_allclose(audio.read(tmp_path / "st.wav", channel=1)[0], right, atol=1e-6)
    win, _ = audio.read(tmp_path / "st.wav", start=100, frames=50, channel=0)
    np.testing.assert_allclose(win, left[100:150], atol=1e-6)
    # bytes read the same as the file they came from
    data = (tmp_path / "st.wav").read_bytes()
    np.testing.assert_array_equal(audio.read(data)[0], wav)
    assert audio.info(data) == (len(left), 16000)


def test_read_errors_name_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        audio.read(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(audio.AudioError, match="bad.wav: cannot read audio") as e:
        audio.read(tmp_path / "bad.wav")
    assert e.value.reason == "undecodable_audio"
    with pytest.raises(audio.AudioError, match="shard.tar:k.flac: zero-byte") as e:
        audio.read(b"", name="shard.tar:k.flac")
    assert e.value.reason == "empty_audio"
    x = tone(0.1, 8000)
    x[3] = np.nan
    sf.write(tmp_path / "nan.wav", x, 8000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="nan.wav: audio contains NaN") as e:
        audio.read(tmp_path / "nan.wav")
    assert e.value.reason == "nan_audio"
    assert np.isnan(audio.read(tmp_path / "nan.wav", validate=False)[0][3])  # eval scores what it is given


def test_resample_keeps_the_type_and_the_tone():
    x = tone(1.0, 16000)
    y = audio.resample(x, 16000, 24000)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and len(y) == 24000
    yt = audio.resample(torch.from_numpy(x), 16000, 24000)
    assert isinstance(yt, torch.Tensor)
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-6)
    np.testing.assert_allclose(y[2000:-2000], tone(1.0, 24000)[2000:-2000], atol=2e-3)  # band-limited: the same 440 Hz
    assert audio.resample(x, 16000, 16000) is x


def test_load_resamples_and_load_tensor_gives_the_model_input(tmp_path):
    sf.write(tmp_path / "a.flac", tone(0.5, 48000), 48000)
    a = audio.load(tmp_path / "a.flac", 16000)
    assert a.sr == 16000 and len(a.samples) == 8000 and a.seconds == 0.5
    t = audio.load_tensor(tmp_path / "a.flac", 24000)
    assert t.dtype == torch.float32 and t.shape == (12000,)
    np.testing.assert_array_equal(t.numpy(), audio.resample(audio.read(tmp_path / "a.flac")[0], 48000, 24000))


def test_save_is_clipped_pcm16_and_atomic(tmp_path, monkeypatch):
    x = np.linspace(-2, 2, 1000, dtype=np.float32)
    p = audio.save(tmp_path / "sub" / "o.wav", torch.from_numpy(x), 24000)
    i = sf.info(p)
    assert (i.samplerate, i.channels, i.subtype, i.format) == (24000, 1, "PCM_16", "WAV")
    y, _ = sf.read(p, dtype="float32")
    assert y.max() <= 1.0 and y.min() >= -1.0 and np.abs(y - np.clip(x, -1, 1)).max() < 1e-4
    assert sf.info(audio.save(tmp_path / "o.flac", x, 16000)).format == "FLAC"
    with pytest.raises(ValueError, match="o.xyz"):
        audio.save(tmp_path / "o.xyz", x, 16000)
    # a failed write leaves the old file and no temporary file behind
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        audio.save(p, x, 24000)
    assert p.read_bytes() == before and sorted(f.name for f in p.parent.iterdir()) == ["o.wav"]


def test_encode_flac_round_trips():
    x = tone(0.2, 16000)
    data = audio.encode_flac(x, 16000)
    assert sf.info(io.BytesIO(data)).format == "FLAC"
    np.testing.assert_allclose(audio.read(data)[0], x, atol=1e-4)


def test_check_refuses_each_bad_signal_with_its_reason_and_the_file(tmp_path):
    from tests.bad_audio import write_bad_wavs

    for name, (path, reason) in write_bad_wavs(tmp_path).items():
        with pytest.raises(audio.AudioError, match=f"{path.name}: ") as e:
            audio.read(path)
        assert e.value.reason == reason, name
        assert len(audio.read(path, validate=False)[0]) == (0 if name == "empty" else 16000)  # eval's raw read


def test_check_thresholds_are_overridable_and_quiet_speech_passes():
    x = tone(1.0, 16000)
    for level_db in (-40, -60, -80):  # quiet but real: 16-bit quantised, still varying
        quiet = np.round(x * 10 ** (level_db / 20) * 32768) / 32768
        audio.check(quiet.astype(np.float32), "quiet")
    hot = np.clip(4 * x, -1, 1)  # a tone driven 18 dB into the rails: 92% of it at full scale
    with pytest.raises(audio.AudioError, match="clipped flat"):
        audio.check(hot, "hot")
    audio.check(hot, "hot", max_clipped_fraction=0.95)
    dither = (np.arange(16000) % 2).astype(np.float32) / 32768  # one 16-bit step of variation
    audio.check(dither, "dither")
    with pytest.raises(audio.AudioError, match="constant audio") as e:
        audio.check(dither, "dither", min_std=1e-4)
    assert e.value.reason == "constant_audio"


@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason=f"real speech folder {SHARED_AUDIO} absent (fresh clone)")
def test_every_real_recording_passes():
    files = sorted(SHARED_AUDIO.glob("*.wav"))
    assert len(files) >= 5
    for f in files:
        wav, _ = audio.read(f)  # raises on any file the check would refuse
        assert wav.size
