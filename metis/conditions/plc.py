"""Packet-loss simulation for the packet-loss concealment task (plc): the utterance as a VoIP receiver
hands it to the decoder when packets are lost.

Speech travels in packets of `packet_ms` (20 ms, the usual VoIP frame). Losses come in bursts, as on
real networks (congestion, Wi-Fi fades): each burst drops 20-120 ms, a whole number of packets. The
loss rate of an utterance is drawn from `loss_rate`; the gaps between bursts are geometric with the
mean that gives that rate. A lost packet is either zeros (a receiver without concealment) or a
repetition of the last received packet (the simplest concealment), chosen per utterance.

    wav, info = PacketLoss()(clean, generator)   # info: loss_rate, bursts, fill
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metis.conditions._random import bernoulli, check_prob, check_range, randint, uniform


class PacketLoss:
    """Drop bursts of packets from a waveform.

    Args:
        packet_ms: packet duration (samples per packet = packet_ms x sample_rate / 1000).
        burst_ms: (lo, hi) duration of one loss burst, rounded to whole packets (20-120 ms).
        loss_rate: (lo, hi) fraction of packets lost in an utterance, uniform per utterance.
        p_repeat: probability (per utterance) that lost packets repeat the last received one instead of
            being zeros.
        sample_rate: of the waveforms.
    """

    def __init__(self, packet_ms: float = 20.0, burst_ms: Sequence[float] = (20.0, 120.0),
                 loss_rate: Sequence[float] = (0.05, 0.3), p_repeat: float = 0.5, sample_rate: int = 16000):
        if packet_ms <= 0:
            raise ValueError(f"packet_ms must be positive, got {packet_ms}")
        self.packet = int(round(packet_ms * sample_rate / 1000))
        lo, hi = check_range("burst_ms", burst_ms)
        if lo <= 0:
            raise ValueError(f"burst_ms must be a positive (lo, hi) range, got {burst_ms!r}")
        self.burst_packets = (max(1, round(lo / packet_ms)), max(1, round(hi / packet_ms)))
        self.loss_rate = check_range("loss_rate", loss_rate)
        if not (0.0 < self.loss_rate[0] and self.loss_rate[1] < 1.0):
            raise ValueError(f"loss_rate must lie in (0, 1), got {loss_rate!r}")
        self.p_repeat = check_prob("p_repeat", p_repeat)

    def lost_packets(self, n_packets: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
        """(n_packets,) bool, True = lost, and the drawn target rate. At least one burst is placed."""
        rate = uniform(generator, *self.loss_rate)
        lo, hi = self.burst_packets
        mean_burst = (lo + hi) / 2
        # per received packet, a burst starts with p; a burst of B packets is always followed by one received
        # packet, so the lost fraction is B / (B + 1 + (1 - p) / p) = rate for p = rate / (B (1 - rate))
        p_start = min(1.0, rate / (mean_burst * (1.0 - rate)))
        lost = torch.zeros(n_packets, dtype=torch.bool)
        k = 0
        while k < n_packets:
            if bernoulli(generator, p_start):
                length = lo + randint(generator, hi - lo + 1)
                lost[k:k + length] = True
                k += length + 1  # a burst ends with a received packet
            else:
                k += 1
        if not lost.any() and n_packets:
            length = min(lo + randint(generator, hi - lo + 1), n_packets)
            start = randint(generator, n_packets - length + 1)
            lost[start:start + length] = True
        return lost, rate

    def __call__(self, wav: torch.Tensor, generator: torch.Generator, others: Sequence[torch.Tensor] = ()
                 ) -> tuple[torch.Tensor, dict]:
        """wav (n,) -> (the received waveform (n,), info); `others` is unused (the SE builder's interface)."""
        n_packets = -(-wav.numel() // self.packet)
        lost, rate = self.lost_packets(n_packets, generator)
        repeat = bernoulli(generator, self.p_repeat)
        out = torch.nn.functional.pad(wav, (0, n_packets * self.packet - wav.numel())).view(n_packets, self.packet).clone()
        last = torch.zeros(self.packet, dtype=wav.dtype)
        for k in range(n_packets):
            if lost[k]:
                out[k] = last if repeat else 0.0
            else:
                last = out[k]
        bursts = int((lost[1:] & ~lost[:-1]).sum() + lost[:1].sum())
        info = {"loss_rate": float(lost.float().mean()), "target_loss_rate": rate, "bursts": bursts,
                "fill": "repeat" if repeat else "zeros"}
        return out.reshape(-1)[: wav.numel()], info
