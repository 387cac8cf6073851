"""The MaskGCT/Metis phone vocabulary (docs/reference.md §9.2, §9.7).

363 symbols, ids 0-362, read by the released T2S checkpoint. The model's ``phone_emb`` has 1024 rows with
``padding_idx=1023``: ids 363-1022 are never produced, and batches are padded with :data:`PHONE_PAD_ID`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

__all__ = ["PHONE_PAD_ID", "PHONE_EMBEDDING_ROWS", "VOCAB_SIZE", "PhoneVocab"]

VOCAB_SIZE = 363
PHONE_EMBEDDING_ROWS = 1024  # rows of MaskGCT_T2S.phone_emb
PHONE_PAD_ID = 1023  # its padding_idx; set the phone mask to zero on padding


class PhoneVocab:
    """Symbol <-> id table with the reference's lookup rules.

    Args:
        symbol_to_id: the ``"vocab"`` mapping of ``phone_vocab.json``; ids must be exactly ``0..len-1``.
    """

    def __init__(self, symbol_to_id: Mapping[str, int]):
        ids = sorted(symbol_to_id.values())
        if ids != list(range(len(ids))):
            raise ValueError(f"phone vocabulary ids must be unique and contiguous from 0; got {len(ids)} symbols")
        self._to_id = dict(symbol_to_id)
        self._to_symbol = {i: s for s, i in self._to_id.items()}

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PhoneVocab":
        """Load ``phone_vocab.json`` (``{"vocab": {symbol: id}}``); the packaged copy when ``path`` is None."""
        if path is None:
            text = resources.files("metis.text").joinpath("phone_vocab.json").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("vocab"), dict):
            raise ValueError(f"{path or 'packaged phone_vocab.json'}: expected a JSON object with a 'vocab' mapping")
        return cls(data["vocab"])

    def __len__(self) -> int:
        return len(self._to_id)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._to_id

    def __getitem__(self, symbol: str) -> int:
        """Id of ``symbol``; ``KeyError`` naming the symbol when it is not in the vocabulary."""
        try:
            return self._to_id[symbol]
        except KeyError:
            raise KeyError(f"phone symbol {symbol!r} is not in the vocabulary") from None

    def symbol(self, phone_id: int) -> str:
        """Symbol of ``phone_id``; ``KeyError`` for ids outside 0..len-1 (the pad id 1023 included)."""
        try:
            return self._to_symbol[phone_id]
        except KeyError:
            raise KeyError(f"phone id {phone_id} is not in the vocabulary (0..{len(self) - 1})") from None

    @property
    def symbols(self) -> dict[str, int]:
        return dict(self._to_id)

    def encode(self, phonemes: str) -> list[int]:
        """The reference ``phoneme2token``: text before the first TAB, split on ``|``, unknown pieces dropped.

        Out-of-vocabulary pieces (empty pieces from leading/trailing ``|``, the stray ``↑`` of the 3-3-3 sandhi
        bug, pieces spanning a newline, French ``ɛ̃``...) are skipped silently, exactly as the reference does.
        """
        phonemes = phonemes.split("\t", 1)[0]
        return [self._to_id[piece] for piece in phonemes.split("|") if piece in self._to_id]

    def unknown_pieces(self, phonemes: str) -> list[str]:
        """The non-empty pieces :meth:`encode` drops, for callers that want to log them."""
        phonemes = phonemes.split("\t", 1)[0]
        return [piece for piece in phonemes.split("|") if piece and piece not in self._to_id]

    def decode(self, ids: Iterable[int]) -> str:
        """``|``-joined symbols of ``ids`` (for inspection; not the inverse of :meth:`encode` on dropped pieces)."""
        return "|".join(self.symbol(int(i)) for i in ids)
