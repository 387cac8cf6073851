"""Codec training recipes (experiment=demo_acoustic_codec / demo_semantic_codec) at tiny sizes on real
speech: losses fall, D and G steps alternate, codebook usage is logged, dead codes restart, the export
loads strictly in the published layout, and a run resumes."""

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from metis.checkpoints import published
from metis.lightning.callbacks import ExportPublished
from metis.lightning.codebook import CodebookUsage, restart_dead_codes
from metis.lightning.training import train
from metis.models.acoustic_codec import ResidualVQ
from tests import SHARED_AUDIO
from tests.lightning.conftest import compose_train

SUMMARY = json.loads((Path(__file__).resolve().parents[1] / "fixtures/layouts/SUMMARY.json").read_text())

TINY_ACOUSTIC = [
    "model.net.encoder.d_model=4", "model.net.encoder.out_channels=16", "model.net.decoder.in_channels=16",
    "model.net.decoder.num_quantizers=3", "model.net.decoder.codebook_size=64", "model.net.decoder.vocos_dim=32",
    "model.net.decoder.vocos_intermediate_dim=64", "model.net.decoder.vocos_num_layers=1",
    "model.discriminator.periods=[2,3]", "model.discriminator.period_channels=[4,4,4,4]",
    "model.discriminator.stft_windows=[512]", "model.discriminator.stft_channels=4",
]
TINY_SEMANTIC = ["model.net.codebook_size=32", "model.net.vocos_dim=16", "model.net.vocos_intermediate_dim=32",
                 "model.net.vocos_num_layers=1"]
QUICK = ["trainer.log_every_n_steps=1", "trainer.enable_model_summary=false", "logger=csv",
         "data.num_workers=0", "data.max_batch_size=2", "data.segment_seconds=0.4", "data.val_segment_seconds=0.4",
         "data.min_dur=0.4", "num_threads=1", "callbacks.progress_bar.refresh_rate=0"]


@pytest.fixture(scope="module")
def speech_shards(tmp_path_factory):
    """The four LibriTTS clips of ../shared/audio as one flac shard (train = val)."""
    clips = sorted(SHARED_AUDIO.glob("libritts_*.wav"))
    if len(clips) < 4:
        pytest.skip(f"real speech not available: fewer than 4 libritts_*.wav under {SHARED_AUDIO}")
    from metis.data.prepare import prepare

    root = tmp_path_factory.mktemp("speech")
    src = root / "src"
    src.mkdir()
    for wav in clips:
        (src / wav.name).symlink_to(wav)
        (src / wav.with_suffix(".txt").name).symlink_to(wav.with_suffix(".txt"))
    prepare(src, root / "shards", progress=False)
    return str(root / "shards")


@pytest.fixture(scope="module")
def kmeans_dir(tmp_path_factory, speech_shards):
    """A k-means demo tokenizer fitted on the clips: its CMVN fbank features feed the semantic codec."""
    from metis.audio import load_tensor
    from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer

    wavs = [load_tensor(wav, 16000) for wav in sorted(SHARED_AUDIO.glob("libritts_*.wav"))]
    out = tmp_path_factory.mktemp("kmeans")
    KMeansTokenizer.fit(wavs, KMeansConfig(n_clusters=8, max_iter=3), log=lambda *a: None).save(out)
    return str(out)


def codec_cfg(tmp_path, shards, *extra, experiment="demo_acoustic_codec", tiny=TINY_ACOUSTIC):
    cfg = compose_train([f"experiment={experiment}", *tiny, *QUICK, f"data.train_shards={shards}",
                         f"data.val_shards={shards}", "run_name=t", *extra], root=tmp_path)
    with open_dict(cfg):
        cfg.data.demo = None  # the shards above instead of the demo corpus
    return cfg


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name) not in (None, "")]


@pytest.mark.parametrize("model, layouts", [
    ("acoustic_codec", {"encoder": "acoustic_codec_encoder", "decoder": "acoustic_codec_decoder"}),
    ("semantic_codec", {"": "semantic_codec_repcodec"}),
])
def test_paper_size_codec_presets_match_the_published_parameter_counts(model, layouts):
    cfg = compose_train([f"model={model}", "data=audio_crops"])
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    for part, layout in layouts.items():
        sub = net.get_submodule(part) if part else net
        assert sum(t.numel() for t in sub.state_dict().values()) == SUMMARY[layout]["total_numel"]


def test_acoustic_codec_losses_fall_and_export_loads_strictly(tmp_path, speech_shards):
    cfg = codec_cfg(tmp_path, speech_shards, "trainer.max_steps=40", "trainer.val_check_interval=10",
                    "model.adversarial_start=1000", "model.usage_window=5")
    result = train(cfg)
    hist = result["val_history"]
    assert len(hist) == 4 and hist[-1] < 0.9 * hist[0], f"val mel loss did not fall: {hist}"  # measured: 5.22 -> 4.53
    rows = metrics(Path(cfg.paths.output_dir))
    usage = column(rows, "train/codebook_usage")
    assert usage and all(0 < u <= 1 for u in usage)
    assert all(p >= 1 for p in column(rows, "train/codebook_perplexity"))

    # export: the two published files, strictly loadable with the run's sizes, and they reproduce the net
    export = Path(result["exported"])
    net_cfg = json.loads((export / ExportPublished.CONFIG).read_text())
    assert net_cfg["_target_"] == "metis.models.acoustic_codec.AcousticCodec"
    enc = published.load("acoustic_encoder", export, **net_cfg["encoder"])
    dec = published.load("acoustic_decoder", export, **net_cfg["decoder"])
    from metis.tokenizers.acoustic import AcousticTokenizer

    tok = AcousticTokenizer(export, export, encoder_config=net_cfg["encoder"], decoder_config=net_cfg["decoder"])
    wav = torch.randn(1, 1, 4800) * 0.1
    codes = tok.encode([wav[0, 0]])[0]  # (t, q)
    assert codes.shape == (10, 3)
    _, ref_codes = dec.eval().quantize(enc.eval()(wav))
    assert torch.equal(codes, ref_codes[:, 0].T)
    assert tok.decode(codes[None]).shape == (1, 4800)


class StepOrder(L.Callback):
    """Records which optimizer stepped, in order ("g" codec, "d" discriminator)."""

    seen: list[str] = []

    def on_train_start(self, trainer, module):
        opt_g, opt_d = trainer.optimizers
        opt_g.register_step_post_hook(lambda *_: StepOrder.seen.append("g"))
        opt_d.register_step_post_hook(lambda *_: StepOrder.seen.append("d"))


def test_discriminator_and_generator_steps_alternate(tmp_path, speech_shards):
    StepOrder.seen = []
    cfg = codec_cfg(tmp_path, speech_shards, "trainer.max_steps=8", "trainer.val_check_interval=100",
                    "model.adversarial_start=2", "trainer.limit_val_batches=0",
                    f"+callbacks.step_order._target_={__name__}.StepOrder")
    result = train(cfg)
    assert StepOrder.seen == ["g", "g", "d", "g", "d", "g", "d", "g"]  # 2 reconstruction-only batches, then D before G
    assert result["global_step"] == 8
    rows = metrics(Path(cfg.paths.output_dir))
    assert column(rows, "train/loss_d") and column(rows, "train/adv_loss") and column(rows, "train/feature_loss")
    assert column(rows, "train/generator_steps")[-1] == 5


def test_acoustic_codec_resumes(tmp_path, speech_shards):
    base = ["model.adversarial_start=2", "trainer.val_check_interval=100", "trainer.limit_val_batches=0",
            "callbacks.model_checkpoint.every_n_train_steps=2", "model.usage_window=3"]
    first = train(codec_cfg(tmp_path, speech_shards, "trainer.max_steps=6", *base))
    ckpt = torch.load(first["last_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["generator_steps"] == 4 and ckpt["global_step"] == 6
    assert len(ckpt["optimizer_states"]) == 2
    cfg = codec_cfg(tmp_path, speech_shards, "trainer.max_steps=10", "ckpt_path=last", *base)
    second = train(cfg)
    assert second["global_step"] == 10
    after = torch.load(second["last_checkpoint"], map_location="cpu", weights_only=True)
    assert after["generator_steps"] == 6  # 2 more batches of D + G, counted on from the checkpoint
    # both optimizers went on from their saved state (Adam step counts), not from scratch
    steps = [max(int(s["step"]) for s in o["state"].values()) for o in after["optimizer_states"]]
    assert steps == [6, 4]


def test_semantic_codec_trains_on_features_and_exports(tmp_path, speech_shards, kmeans_dir):
    cfg = codec_cfg(tmp_path, speech_shards, "trainer.max_steps=30", "trainer.val_check_interval=10",
                    "model.usage_window=5", f"model.features.directory={kmeans_dir}", "data.max_batch_size=4",
                    experiment="demo_semantic_codec", tiny=TINY_SEMANTIC)
    result = train(cfg)
    hist = result["val_history"]
    assert len(hist) == 3 and hist[-1] < hist[0], f"val L1 did not fall: {hist}"
    rows = metrics(Path(cfg.paths.output_dir))
    assert column(rows, "train/codebook_usage") and column(rows, "val/rec_loss_vs_mean")
    export = Path(result["exported"])
    net_cfg = json.loads((export / ExportPublished.CONFIG).read_text())
    net_cfg.pop("_target_")
    codec = published.load("semantic_codec", export, **net_cfg)  # strict
    assert codec.hidden_size == 160 and codec.codebook_size == 32


def test_dead_codes_restart_where_the_data_is():
    torch.manual_seed(0)
    vq = ResidualVQ(input_dim=16, num_quantizers=2, codebook_size=32, codebook_dim=4, quantizer_dropout=0.0)
    with torch.no_grad():  # a collapsed first codebook: every code but one far from any input
        vq.quantizers[0].codebook.weight.copy_(torch.randn(32, 4) * 1e-3 + torch.tensor([5.0, 0, 0, 0]))
        vq.quantizers[0].codebook.weight[0] = torch.tensor([-1.0, 0, 0, 0])
    z = torch.randn(4, 16, 50)
    usage = CodebookUsage(2, 32)
    usage.update(vq.eval()(z)[1])
    before = usage.usage()
    n = restart_dead_codes(vq, z, usage.dead(), torch.Generator().manual_seed(0))
    assert n == int((usage.counts == 0).sum())
    after = CodebookUsage(2, 32)
    after.update(vq(z)[1])
    assert after.usage()[0] > before[0] + 0.3, (before, after.usage())
    # a restarted code is a latent of the batch (in the first stage's projected space)
    z_e = vq.quantizers[0].in_project(z).transpose(1, 2).reshape(-1, 4)
    row = vq.quantizers[0].codebook.weight[usage.dead()[0][0]]
    assert torch.isclose(z_e, row).all(-1).any()


def test_codec_experiments_compose_and_resolve(tmp_path):
    for name in ("acoustic_codec", "semantic_codec", "demo_acoustic_codec", "demo_semantic_codec"):
        cfg = compose_train([f"experiment={name}", "data.train_shards=/nonexistent/x.tar"], root=tmp_path)
        OmegaConf.to_container(cfg, resolve=True)
        if "acoustic" in name:  # manual optimization: the module clips, Lightning must not
            assert cfg.trainer.gradient_clip_val is None
        assert cfg.callbacks.export._target_ == "metis.lightning.callbacks.ExportPublished"


def test_demo_codec_reads_the_corpus_the_default_demo_builds(tmp_path):
    """data=demo_audio_crops builds (or reuses) the corpus of data=demo: any other setting fails with
    'built with another configuration' once `python train.py` has built it."""
    from metis.data.demo import DemoConfig

    def demo(overrides):
        cfg = compose_train(overrides, root=tmp_path)
        return DemoConfig(**OmegaConf.to_container(cfg.data.demo, resolve=True))

    assert demo(["experiment=demo_acoustic_codec"]) == demo([])


def test_demo_s2a_experiments_read_the_codec_token_shards(tmp_path):
    for name, nq in (("demo_s2a_1layer", 1), ("demo_s2a_full", 12)):
        cfg = compose_train([f"experiment={name}"], root=tmp_path)
        OmegaConf.to_container(cfg, resolve=True)
        assert cfg.run_name == name and cfg.model.net.num_quantizer == nq
        assert cfg.data.train_shards.endswith("demo/tokens_ac/train") and list(cfg.data.fields) == ["sem", "ac"]
        with torch.device("meta"):
            assert instantiate(cfg.model).net.cond_emb.num_embeddings == 512  # the demo's k-means codes


def test_codec_samples_write_real_and_resynthesised_wavs(tmp_path):
    import soundfile as sf
    from types import SimpleNamespace

    from metis.lightning.codec_samples import CodecSamples, log_mel_image
    from metis.models.acoustic_codec import AcousticCodec

    net = AcousticCodec({"d_model": 2, "out_channels": 8},
                        {"in_channels": 8, "num_quantizers": 2, "codebook_size": 16, "codebook_dim": 4, "vocos_dim": 16,
                         "vocos_intermediate_dim": 32, "vocos_num_layers": 1}).train()
    cb = CodecSamples(n_samples=2, output_dir=str(tmp_path))
    wav = torch.randn(3, 1, 4800) * 0.1
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=7, loggers=[],
                              default_root_dir=str(tmp_path))
    module = SimpleNamespace(net=net)
    cb.on_validation_batch_end(trainer, module, None, {"wav": wav}, 0)
    cb.on_validation_epoch_end(trainer, module)
    assert net.training  # the net's mode is restored
    for i in range(2):
        real, sr = sf.read(tmp_path / "step00000007" / f"sample{i}_real.wav")
        fake, _ = sf.read(tmp_path / "step00000007" / f"sample{i}_codec.wav")
        assert sr == 24000 and len(real) == len(fake) == 4800
    assert not (tmp_path / "step00000007" / "sample2_real.wav").exists()
    image = log_mel_image([wav[0, 0].numpy(), wav[1, 0].numpy()], 24000, ["a", "b"])
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"
