"""Text front end of MaskGCT/Metis: text -> phone ids the released T2S checkpoint reads.

``G2P()(text, language)`` returns ``(phonemes, ids)``; see :mod:`metis.text.g2p`. Batches of ids are padded
with :data:`PHONE_PAD_ID` (1023, the ``padding_idx`` of the model's 1024-row phone embedding).
"""

from metis.text.g2p import (
    G2P,
    G2PError,
    MissingMandarinResources,
    UnknownLanguageError,
    UnsupportedLanguageError,
    segment_by_script,
)
from metis.text.mandarin import ENV_LEXICON, ENV_POLY_BERT
from metis.text.vocab import PHONE_EMBEDDING_ROWS, PHONE_PAD_ID, VOCAB_SIZE, PhoneVocab

__all__ = [
    "G2P",
    "G2PError",
    "MissingMandarinResources",
    "UnknownLanguageError",
    "UnsupportedLanguageError",
    "segment_by_script",
    "PhoneVocab",
    "PHONE_PAD_ID",
    "PHONE_EMBEDDING_ROWS",
    "VOCAB_SIZE",
    "ENV_LEXICON",
    "ENV_POLY_BERT",
]
