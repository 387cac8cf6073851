import numpy as np
import pytest
import torch

from metis.conditions import AudioError, NoiseBank, coloured_noise
from tests.conditions.conftest import SR, gen, speechlike, wav_bytes, write_shard, write_wav


def psd_slope(x: torch.Tensor) -> float:
    """Slope of log10 PSD vs log10 frequency over 100 Hz..6 kHz (Welch-averaged)."""
    frames = x[: len(x) // 512 * 512].reshape(-1, 512) * torch.hann_window(512)
    p = (torch.fft.rfft(frames).abs() ** 2).mean(0)
    f = torch.fft.rfftfreq(512, 1 / SR)
    sel = (f > 100) & (f < 6000)
    lx, ly = torch.log10(f[sel]).double(), torch.log10(p[sel]).double()
    return float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())


@pytest.mark.parametrize("colour,alpha", [("white", 0.0), ("pink", 1.0), ("brown", 2.0)])
def test_coloured_noise_has_the_spectral_slope(colour, alpha):
    x = coloured_noise(SR * 2, colour, gen(3))
    assert x.shape == (SR * 2,)
    assert float(x.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    assert psd_slope(x) == pytest.approx(-alpha, abs=0.15)


def test_coloured_noise_deterministic_and_seed_dependent():
    assert torch.equal(coloured_noise(1000, "pink", gen(1)), coloured_noise(1000, "pink", gen(1)))
    assert not torch.equal(coloured_noise(1000, "pink", gen(1)), coloured_noise(1000, "pink", gen(2)))
    with pytest.raises(ValueError, match="unknown colour"):
        coloured_noise(10, "purple", gen(0))


def test_folder_bank_lazy_resampled_and_looped(tmp_path):
    rng = np.random.default_rng(0)
    write_wav(tmp_path / "a" / "n1.wav", rng.standard_normal((4000, 2)).astype(np.float32) * 0.1, 8000)  # stereo 8 kHz
    write_wav(tmp_path / "n2.flac", rng.standard_normal(3000).astype(np.float32) * 0.1, SR)
    (tmp_path / "readme.txt").write_text("not audio")
    bank = NoiseBank.from_folder(tmp_path, sample_rate=SR)
    assert len(bank) == 2
    files = set()
    for seed in range(6):
        x, info = bank.draw(SR, gen(seed))  # longer than either file: looped
        assert x.shape == (SR,) and torch.isfinite(x).all() and float(x.pow(2).mean()) > 1e-4
        files.add(info["noise_file"])
    assert files == {str(tmp_path / "a" / "n1.wav"), str(tmp_path / "n2.flac")}
    assert torch.equal(bank.sample(500, gen(9)), bank.sample(500, gen(9)))
    assert bank.validate() == 2


def test_folder_bank_reads_only_a_window_of_a_long_file(tmp_path, monkeypatch):
    import soundfile

    x = np.random.default_rng(1).standard_normal(SR * 20).astype(np.float32) * 0.01
    write_wav(tmp_path / "long.wav", x, SR)
    bank = NoiseBank.from_folder(tmp_path)
    reads = []
    real_read = soundfile.read

    def spy(*args, **kwargs):
        out = real_read(*args, **kwargs)
        reads.append(len(out[0]))
        return out

    monkeypatch.setattr(soundfile, "read", spy)
    seg = bank.sample(SR // 10, gen(0))
    assert seg.shape == (SR // 10,)
    assert reads and max(reads) <= SR // 10 + 64  # a window, not the 20 s file
    starts = {bank.sample(SR // 10, gen(s))[0].item() for s in range(4)}
    assert len(starts) == 4  # random positions


def test_empty_folder_names_the_folder(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(AudioError, match=str(tmp_path)):
        NoiseBank.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        NoiseBank.from_folder(tmp_path / "missing")


def test_unreadable_and_zero_length_files_name_the_file(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    bank = NoiseBank.from_folder(tmp_path)  # lazy: listing succeeds
    with pytest.raises(AudioError, match="broken.wav"):
        bank.sample(100, gen(0))
    with pytest.raises(AudioError, match="broken.wav"):
        bank.validate()
    empty = tmp_path.parent / "empty_audio"
    write_wav(empty / "zero.wav", np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="zero.wav: zero-length"):
        NoiseBank.from_folder(empty).sample(100, gen(0))


def test_silent_noise_file_is_reported(tmp_path):
    write_wav(tmp_path / "silence.wav", np.zeros(2000, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="silence.wav"):
        NoiseBank.from_folder(tmp_path).sample(100, gen(0))


def test_bad_noise_files_are_never_mixed_in_and_are_counted(tmp_path):
    """A folder of good noise and bad files (tests/bad_audio.py): every draw comes from a good file,
    every bad window drawn is counted under its reason; the draws are those of a bank that never saw a
    bad file before (exact resume). The check is on the window read: a file that is bad only in places
    gives its good windows."""
    from tests.bad_audio import write_bad_wavs

    bad = write_bad_wavs(tmp_path / "bad", seconds=0.5, sr=SR, names=("minus_one_int16", "dc", "clipped_flat", "all_nan"))
    good = {str(write_wav(tmp_path / f"good{i}.wav", speechlike(1.0, seed=i), SR)) for i in range(8)}
    bank = NoiseBank.from_folder(tmp_path, sample_rate=SR)
    infos = [bank.draw(800, gen(i))[1] for i in range(30)]
    assert {i["noise_file"] for i in infos} <= good
    assert set(bank.skips.totals) == {f"noise_{reason}" for _, reason in bad.values()}
    assert bank.skips.total >= len(bad)
    again = NoiseBank.from_folder(tmp_path, sample_rate=SR)  # a fresh bank: same draws for the same seed
    assert torch.equal(again.sample(800, gen(29)), bank.sample(800, gen(29)))
    only_bad = NoiseBank.from_folder(tmp_path / "bad", sample_rate=SR)
    with pytest.raises(AudioError, match="unusable noise windows in a row") as e:
        only_bad.sample(800, gen(0))
    assert str(tmp_path / "bad") in str(e.value)


def test_shard_bank(tmp_path):
    rng = np.random.default_rng(2)
    members = {f"k{i}.flac": wav_bytes(rng.standard_normal(2000).astype(np.float32) * 0.1, 8000) for i in range(3)}
    members["k0.json"] = b"{}"
    shard = write_shard(tmp_path / "noise-000000.tar", members)
    bank = NoiseBank.from_shards(str(shard))
    x, info = bank.draw(SR // 2, gen(0))
    assert x.shape == (SR // 2,) and info["noise"] == "file"
    assert info["noise_file"].startswith(f"{shard}:k") and info["noise_file"].endswith(".flac")
    assert bank.validate() == 3
    bad = write_shard(tmp_path / "bad.tar", {"k.wav": b"garbage"})
    with pytest.raises(AudioError, match="bad.tar:k.wav"):
        NoiseBank.from_shards(str(bad)).sample(100, gen(0))


def test_babble_bank_and_coloured_bank():
    utts = [speechlike(0.4, seed=i) for i in range(5)]
    bank = NoiseBank.babble(utts, n_talkers=(3, 4))
    x, info = bank.draw(SR, gen(0))
    assert x.shape == (SR,) and info["noise"] == "babble" and info["noise_talkers"] in (3, 4)
    assert float(x.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    assert torch.equal(bank.sample(SR, gen(5)), bank.sample(SR, gen(5)))
    assert not torch.equal(bank.sample(SR, gen(5)), bank.sample(SR, gen(6)))
    colours = {NoiseBank.coloured().draw(100, gen(s))[1]["noise_colour"] for s in range(20)}
    assert colours == {"white", "pink", "brown"}


def test_the_condition_stage_ships_the_banks_refusals_with_the_batch_skips(tmp_path):
    """SE fine-tuning conditions drawn in the loader workers: the refused bank files reach the trainer
    in `batch["skipped"]` (as noise_<reason> / rir_<reason>, beside the loader's own counts)."""
    from metis.conditions import RIRBank, SEDegrader, simulate_rir
    from metis.conditions.builders import ConditionStage, SEConditions
    from tests.bad_audio import write_bad_wavs

    write_bad_wavs(tmp_path / "noise", seconds=0.5, sr=SR, names=("minus_one_int16", "dc"))
    write_bad_wavs(tmp_path / "rirs", seconds=0.2, sr=SR, names=("all_nan",))
    for i in range(4):
        write_wav(tmp_path / "noise" / f"good{i}.wav", speechlike(1.0, seed=i), SR)
        write_wav(tmp_path / "rirs" / f"room{i}.wav", simulate_rir(0.3, gen(i), SR).numpy() * 0.5, SR)
    noise, rirs = NoiseBank.from_folder(tmp_path / "noise", SR), RIRBank.from_folder(tmp_path / "rirs", SR)
    stage = ConditionStage(SEConditions(SEDegrader(noise=noise, rirs=rirs, p_reverb=1.0, p_clip=0.0, p_bandlimit=0.0)))
    wav = torch.stack([speechlike(0.5, seed=10 + i) for i in range(3)])
    batch = {"wav16": wav, "wav16_lens": torch.full((3,), wav.shape[1]), "sem": torch.zeros(3, 25, dtype=torch.long),
             "sem_lens": torch.full((3,), 25), "skipped": {"too_long": 1}}
    out = list(stage(iter([batch] * 12), "train", "0/0"))
    shipped: dict[str, int] = {}
    for b in out:
        assert "task_inputs" in b
        for k, v in b["skipped"].items():
            shipped[k] = shipped.get(k, 0) + v
    assert shipped.pop("too_long") == 12  # the loader's counts pass through
    assert shipped == {**noise.skips.as_dict(), **rirs.skips.as_dict()}
    assert {k.split("_", 1)[0] for k in shipped} == {"noise", "rir"}  # both banks met their bad files
