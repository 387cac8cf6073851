"""Published numbers to print beside a run (from the project's paper digest, docs/reference.md §10.9).

Keyed by protocol and subset as the readers name them. Metis values come from secondary sources
(see the digest); WER is in percent, as in the papers.
"""
from __future__ import annotations

# (protocol, subset) -> list of (system, {metric key: value})
PUBLISHED: dict[tuple[str, str], list[tuple[str, dict[str, float]]]] = {
    ("seedtts", "en"): [
        ("Ground truth (MaskGCT Table 2)", {"wer": 2.143, "sim_wavlm": 0.730}),
        ("MaskGCT (MaskGCT Table 2)", {"wer": 2.623, "sim_wavlm": 0.717}),
        ("MaskGCT, gt length", {"wer": 2.466, "sim_wavlm": 0.728}),
        ("Metis-TTS full FT 10K h (Metis Table 1)", {"wer": 2.28, "sim_wavlm": 0.72}),
        ("Metis-TTS LoRA-32 1K h (Metis Table 1)", {"wer": 4.78, "sim_wavlm": 0.72}),
    ],
    ("seedtts", "zh"): [
        ("Ground truth (MaskGCT Table 2)", {"cer": 1.254, "sim_wavlm": 0.750}),
        ("MaskGCT (MaskGCT Table 2)", {"cer": 2.273, "sim_wavlm": 0.774}),
        ("Metis-TTS full FT 10K h (Metis Table 1)", {"cer": 2.30}),
    ],
    ("dns2020", "with_reverb"): [
        ("MaskSR (Metis Table 4)", {"dnsmos_sig": 3.53, "dnsmos_bak": 4.07, "dnsmos_ovrl": 3.25, "nisqa": 3.82}),
        ("Metis-SE (Metis Table 4)", {"dnsmos_sig": 3.68, "dnsmos_bak": 4.14, "dnsmos_ovrl": 3.44, "nisqa": 4.56}),
    ],
    ("dns2020", "real_recordings"): [("Metis-SE (Metis Table 4)", {"dnsmos_sig": 3.59})],
    ("libri2mix", "mix_clean"): [
        ("WeSep (Metis Table 3)", {"nisqa": 4.04, "wer": 6.19}),
        ("Metis-TSE (Metis Table 3)", {"nisqa": 4.41, "wer": 6.31, "dnsmos_sig": 3.588}),
    ],
}


def published_markdown(protocol: str | None, subsets: list[str]) -> str:
    """A markdown table of published results for the run's subsets, or '' when none are known."""
    if not protocol:
        return ""
    rows = [(s, system, vals) for s in subsets for system, vals in PUBLISHED.get((protocol, s), [])]
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for _, _, v in rows for k in v))
    head = [("WER (%)" if k == "wer" else "CER (%)" if k == "cer" else k) for k in keys]
    lines = ["Published (docs/reference.md §10.9; SIM there is WavLM-TDNN, WER Whisper-large-v3 / Paraformer-zh):", "",
             "| subset | system | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(keys)]
    for s, system, vals in rows:
        lines.append(f"| {s} | {system} | " + " | ".join(f"{vals[k]:g}" if k in vals else "–" for k in keys) + " |")
    return "\n".join(lines) + "\n"
