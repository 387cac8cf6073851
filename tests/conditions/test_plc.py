"""Packet-loss simulation (task plc): bursts of whole 20 ms packets, 20-120 ms long, lost as zeros or as
the last received packet repeated; received packets untouched; seeded; the drawn loss rate is met."""

import pytest
import torch

from metis.conditions.plc import PacketLoss
from tests.conditions.conftest import SR, gen, speechlike

PACKET = SR * 20 // 1000


def _runs(lost: torch.Tensor) -> list[int]:
    """Lengths of the runs of True."""
    runs, n = [], 0
    for v in lost.tolist() + [False]:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


@pytest.mark.parametrize("p_repeat, fill", [(0.0, "zeros"), (1.0, "repeat")])
def test_lost_packets_are_zeros_or_the_last_received_one(p_repeat, fill):
    clean = speechlike(3.0, seed=1)
    y, info = PacketLoss(p_repeat=p_repeat)(clean, gen(3))
    assert y.shape == clean.shape and info["fill"] == fill
    packets, source = y.view(-1, PACKET), clean.view(-1, PACKET)
    lost = ~(packets == source).all(1)
    assert lost.any() and info["bursts"] == len(_runs(lost))
    assert all(1 <= r <= 6 for r in _runs(lost))  # 20-120 ms bursts of 20 ms packets
    last = torch.zeros(PACKET)
    for k in range(len(packets)):
        if lost[k]:
            assert torch.equal(packets[k], last if fill == "repeat" else torch.zeros(PACKET))
        else:
            last = source[k]
    assert info["loss_rate"] == pytest.approx(float(lost.float().mean()))


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.3])
def test_loss_rate_is_met_on_long_streams(rate):
    lost, drawn = PacketLoss(loss_rate=(rate, rate)).lost_packets(20_000, gen(0))
    assert drawn == rate and abs(float(lost.float().mean()) - rate) < 0.02
    runs = _runs(lost)
    assert min(runs) == 1 and max(runs) == 6 and 3.0 < sum(runs) / len(runs) < 4.0  # uniform 1..6 packets


def test_seeded_and_varied():
    clean = speechlike(2.0, seed=0)
    pl = PacketLoss()
    a, ia = pl(clean, gen(5))
    b, ib = pl(clean, gen(5))
    assert torch.equal(a, b) and ia == ib
    assert not torch.equal(a, pl(clean, gen(6))[0])


def test_short_input_still_loses_a_burst_and_keeps_its_length():
    clean = speechlike(0.05, seed=0)[:777]  # under 3 packets, not a whole number of them
    y, info = PacketLoss(loss_rate=(0.01, 0.01))(clean, gen(0))
    assert y.shape == clean.shape and info["bursts"] >= 1 and info["loss_rate"] > 0


@pytest.mark.parametrize("kwargs, name", [({"burst_ms": (0, 40)}, "burst_ms"), ({"loss_rate": (0.1, 1.0)}, "loss_rate"),
                                          ({"p_repeat": 1.5}, "p_repeat"), ({"packet_ms": 0}, "packet_ms")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PacketLoss(**kwargs)
