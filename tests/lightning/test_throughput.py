"""Whole-step throughput and MFU (`metis.lightning.throughput`): the FLOP formula against the FLOPs
torch counts in a training step, and a tokens/s that includes the backward and optimizer step."""

import functools
import time

import lightning as L
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from metis.lightning.masked_module import Stage1PretrainModule
from metis.lightning.metrics import masked_token_loss
from metis.lightning.synthetic_data import SyntheticTokenDataModule
from metis.lightning.throughput import TrainThroughput, per_token_matmul_params, training_flops
from metis.models.metis_stage1 import MetisStage1
from metis.models.s2a import MaskGCTS2A

D, LAYERS, V = 64, 2, 32
LENGTHS = [37, 12, 25, 30]


def counted_step(packing: str) -> tuple[dict, float, MetisStage1, torch.Tensor]:
    torch.manual_seed(0)
    net = MetisStage1(hidden_size=D, num_layers=LAYERS, num_heads=4, cond_codebook_size=V, packing=packing, norm_init="unit")
    x0 = torch.randint(0, V, (len(LENGTHS), max(LENGTHS)))
    mask = (torch.arange(max(LENGTHS))[None] < torch.tensor(LENGTHS)[:, None]).float()
    # the math SDPA backend is made of bmm's, which the counter sees (the fused CPU kernel is opaque)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        out = net(x0, mask)
        masked_token_loss(out.logits, x0, out.final_mask)[0].backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return counts, counter.get_total_flops(), net, mask.sum(1)


def test_flop_formula_is_what_a_packed_training_step_executes():
    counts, total, net, lens = counted_step(packing="compute")
    n = per_token_matmul_params(net)
    assert n == LAYERS * 16 * D * D + D * V  # q, k, v, o (4 d²) + SwiGLU (3 · 4 d²) per layer, and the head
    formula = training_flops(n, LAYERS, D, lens)
    assert counts["aten.bmm"] == 12 * LAYERS * D * sum(x * x for x in LENGTHS)  # attention, exactly
    # the rest is 6N per token plus the per-utterance adaptive-norm gains and time MLP (~1 % here)
    assert 1.0 <= total / formula < 1.02, total / formula


def test_padded_step_executes_work_the_formula_does_not_count():
    """Without packing the padded frames are computed: executed FLOPs exceed the model FLOPs (MFU counts
    useful work only), by about the padding share of the batch."""
    _, packed_total, _, lens = counted_step(packing="compute")
    _, padded_total, _, _ = counted_step(packing="off")
    padding = 1 - sum(LENGTHS) / (len(LENGTHS) * max(LENGTHS))
    assert padded_total / packed_total > 1 + 0.8 * padding


def test_s2a_counts_one_output_head():
    net = MaskGCTS2A(num_quantizer=3, hidden_size=D, num_layers=LAYERS, num_heads=4, codebook_size=V, cond_codebook_size=V)
    assert per_token_matmul_params(net) == LAYERS * 16 * D * D + 2 * 4 * D * D + D * V  # + cond_mlp, one of 3 heads


class SlowOptimizerStep(L.Callback):
    """Sleeps between backward and the optimizer step: time a forward-only timer never sees."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        time.sleep(self.seconds)


class Record(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        if "train/tokens_per_s" in m:
            self.rows.append({k: float(m[k]) for k in ("train/tokens_per_s", "train/audio_seconds_per_s", "train/mfu")}
                             | {"frames": float(batch["sem_mask"].sum())})


def test_tokens_per_s_covers_the_whole_step():
    torch.manual_seed(0)
    net = MetisStage1(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=16, packing="compute", norm_init="unit")
    module = Stage1PretrainModule(net, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    data = SyntheticTokenDataModule(codebook_size=16, batch_size=4, min_len=16, max_len=16, n_train=64)  # 64 frames a step
    sleep, peak = 0.2, 1e9
    record = Record()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=[TrainThroughput(window=2, peak_flops=peak), SlowOptimizerStep(sleep), record])
    trainer.fit(module, datamodule=data)
    assert len(record.rows) == 5  # from the second step on (a window of 2 step ends), every step
    flops_per_frame = training_flops(per_token_matmul_params(net), 2, 32, [16] * 4) / 64
    for row in record.rows:
        assert row["train/tokens_per_s"] <= row["frames"] / sleep  # the sleep after backward is in the step
        assert row["train/tokens_per_s"] > row["frames"] / (sleep + 2.0)
        assert abs(row["train/audio_seconds_per_s"] - row["train/tokens_per_s"] / 50) < 1e-6 * row["train/tokens_per_s"]
        mfu = row["train/tokens_per_s"] * flops_per_frame / peak
        assert abs(row["train/mfu"] - mfu) < 1e-6 * mfu
