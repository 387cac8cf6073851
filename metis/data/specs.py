"""Tokenizer specs: one string picks the tokenizer used by `tokenize`, `stats` and the loader checks.

    kmeans:data/demo/tokenizer          the fitted demo tokenizer (metis.tokenizers.kmeans)
    semantic                            w2v-BERT 2.0 + RepCodec (metis.tokenizers.semantic.SemanticTokenizer)
    semantic:{"device": "cuda"}         ... with constructor keyword arguments (JSON object)
    acoustic                            the 24 kHz acoustic codec (metis.tokenizers.acoustic.AcousticTokenizer)
    w2v-bert                            w2v-BERT 2.0 layer-17 features only (for `stats`)
    pkg.module:Factory[:ARG]            any callable returning a SpeechTokenizer

ARG is a JSON object (keyword arguments) or a plain string (one positional argument, e.g. a path).
Modules are imported only when the spec is loaded, so the data package depends on the tokenizer
interface alone.
"""

from __future__ import annotations

import importlib
import json

ALIASES = {
    "kmeans": "metis.tokenizers.kmeans:KMeansTokenizer.load",
    "semantic": "metis.tokenizers.semantic:SemanticTokenizer",
    "acoustic": "metis.tokenizers.acoustic:AcousticTokenizer",
    "w2v-bert": "metis.tokenizers.semantic:W2vBertFeatureExtractor",  # features only (for `stats`)
}


def _resolve(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def parse_spec(spec: str) -> tuple[str, list, dict]:
    """-> (target 'module:attr', args, kwargs)."""
    head, _, rest = spec.partition(":")
    if head in ALIASES:
        target, arg = ALIASES[head], rest
    else:
        mod_attr, _, arg = rest.partition(":")
        if not mod_attr:
            raise ValueError(f"tokenizer spec {spec!r}: expected one of {sorted(ALIASES)} or 'module:Factory[:ARG]'")
        target = f"{head}:{mod_attr}"
    if not arg:
        return target, [], {}
    if arg.lstrip().startswith("{"):
        try:
            kwargs = json.loads(arg)
        except json.JSONDecodeError as exn:
            raise ValueError(f"tokenizer spec {spec!r}: bad JSON arguments ({exn})") from None
        return target, [], kwargs
    return target, [arg], {}


def load_tokenizer(spec: str, device: str | None = None,
                   require: tuple[str, ...] = ("sample_rate", "frame_rate", "identity", "encode")):
    """Build the tokenizer (or feature extractor) a spec names, check it has the `require`d
    attributes, and move it to `device` when it has a `.to` method."""
    target, args, kwargs = parse_spec(spec)
    try:
        factory = _resolve(target)
    except (ImportError, AttributeError) as exn:
        raise ValueError(f"tokenizer spec {spec!r}: cannot import {target} ({exn})") from None
    tok = factory(*args, **kwargs)
    for attr in require:
        if not hasattr(tok, attr):
            raise TypeError(f"tokenizer spec {spec!r} built {type(tok).__name__}, which lacks `{attr}`")
    if device is not None and hasattr(tok, "to"):
        tok = tok.to(device) or tok
    return tok
