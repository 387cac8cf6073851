"""Waveform-level condition simulation for Metis fine-tuning (no Lightning, no models).

Every function takes mono float tensors (n,) at `sample_rate` (16 kHz by default) and draws every
random choice from a passed `torch.Generator`. See docs/conditions.md.

    SE:  SEDegrader(noise=NoiseBank..., rirs=RIRBank...)(clean, g) -> (degraded, info)
    TSE: TSEMixer()(target, interferer, g) -> (mixture, info); enrollment from SpeakerReservoir.draw
    VC:  VCPerturber()(wav, g) -> (perturbed, info)
    L2S: upsample_visual(vis, prompt_frames); audio_stand_in(wav) on the offline demo (no video: not lip features)
"""

from metis.audio import AudioError
from metis.conditions.distortions import band_limit, clip, peak_threshold
from metis.conditions.noise import COLOUR_EXPONENTS, NoiseBank, babble, coloured_noise
from metis.conditions.reservoir import SpeakerReservoir
from metis.conditions.rir import RIRBank, reverberate, schroeder_rt60, simulate_rir
from metis.conditions.se import SEDegrader
from metis.conditions.signal import fit_length, gain_for_snr, mix_at_snr, power, snr_db
from metis.conditions.tse import TSEMixer
from metis.conditions.vc import VCPerturber, perturb_timbre, pitch_shift, warp_envelope
from metis.conditions.visual import audio_stand_in, load_video_features, upsample_visual

__all__ = [
    "AudioError", "audio_stand_in", "COLOUR_EXPONENTS", "NoiseBank", "RIRBank", "SEDegrader", "SpeakerReservoir", "TSEMixer",
    "VCPerturber", "babble", "band_limit", "clip", "coloured_noise", "fit_length", "gain_for_snr",
    "load_video_features", "mix_at_snr", "peak_threshold", "perturb_timbre", "pitch_shift", "power", "reverberate",
    "schroeder_rt60", "simulate_rir", "snr_db", "upsample_visual", "warp_envelope",
]
