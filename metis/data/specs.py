"""Tokenizers by name: short aliases for the Hydra `_target_` nodes that build them.

`tokenize`, `stats`, the loader checks and the fine-tune's feature extractor take a tokenizer as a
`_target_` node (any callable returning a SpeechTokenizer) or as one of these aliases for one:

    kmeans:data/demo/tokenizer          {_target_: metis.tokenizers.kmeans.KMeansTokenizer.load, directory: ...}
    semantic                            {_target_: metis.tokenizers.semantic.SemanticTokenizer}
    semantic:{"device": "cuda"}         ... with keyword arguments (a JSON object)
    acoustic                            {_target_: metis.tokenizers.acoustic.AcousticTokenizer}
    w2v-bert                            w2v-BERT 2.0 layer-17 features only (for `stats`)

On the command line a node is written as JSON: ``--tokenizer '{"_target_": "pkg.mod.Factory", "arg": 1}'``.
Modules are imported only when the node is built, so the data package depends on the tokenizer
interface alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

# alias -> (`_target_`, the keyword that a plain-string argument fills)
ALIASES: Mapping[str, tuple[str, str | None]] = {
    "kmeans": ("metis.tokenizers.kmeans.KMeansTokenizer.load", "directory"),
    "semantic": ("metis.tokenizers.semantic.SemanticTokenizer", None),
    "acoustic": ("metis.tokenizers.acoustic.AcousticTokenizer", None),
    "w2v-bert": ("metis.tokenizers.semantic.W2vBertFeatureExtractor", None),  # features only (for `stats`)
}


def tokenizer_node(spec: str | Mapping) -> dict:
    """An alias string or a `_target_` node (a mapping, or its JSON) -> the `_target_` node."""
    if isinstance(spec, Mapping):
        node = dict(spec)
    elif spec.lstrip().startswith("{"):
        try:
            node = json.loads(spec)
        except json.JSONDecodeError as exn:
            raise ValueError(f"tokenizer spec {spec!r}: bad JSON ({exn})") from None
    else:
        head, _, arg = spec.partition(":")
        if head not in ALIASES:
            raise ValueError(f"tokenizer spec {spec!r}: expected one of {sorted(ALIASES)} or a _target_ node")
        target, positional = ALIASES[head]
        node = {"_target_": target}
        if arg.lstrip().startswith("{"):
            try:
                node.update(json.loads(arg))
            except json.JSONDecodeError as exn:
                raise ValueError(f"tokenizer spec {spec!r}: bad JSON arguments ({exn})") from None
        elif arg:
            if positional is None:
                raise ValueError(f"tokenizer spec {spec!r}: {head} takes keyword arguments only ({head}:{{...}})")
            node[positional] = arg
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"tokenizer spec {spec!r}: a node needs a _target_")
    return node


def load_tokenizer(spec: str | Mapping, device: str | None = None,
                   require: tuple[str, ...] = ("sample_rate", "frame_rate", "identity", "encode")):
    """Build the tokenizer (or feature extractor) a spec names (Hydra `instantiate`), check it has the
    `require`d attributes, and move it to `device` when it has a `.to` method."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = tokenizer_node(spec)
    try:
        tok = instantiate(node, _convert_="all")
    except InstantiationException as exn:
        cause = exn.__cause__
        if cause is None or isinstance(cause, (ImportError, AttributeError)):  # a _target_ that names nothing
            raise ValueError(f"tokenizer spec {spec!r}: cannot build {node['_target_']} ({exn})") from None
        raise cause from None  # the tokenizer's own error (a missing folder, a bad argument), which names it
    for attr in require:
        if not hasattr(tok, attr):
            raise TypeError(f"tokenizer spec {spec!r} built {type(tok).__name__}, which lacks `{attr}`")
    if device is not None and hasattr(tok, "to"):
        tok = tok.to(device) or tok
    return tok
