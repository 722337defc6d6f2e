"""The byte-level BPE tokenizer of the embedded tiny model.

Implements a byte-level BPE vocabulary of exactly the 256 byte symbols (GPT-2's byte-to-unicode alphabet, so
token id == byte value) plus two special tokens, ``<|endoftext|>`` (EOS, id 256) and ``<|pad|>`` (pad, id
257), with no merges: every byte is one token, every string round-trips exactly and ``"\\n"`` is its own token
(EchoRL splits reasoning steps at newline tokens). Leaves out merges (the embedded arithmetic task is short,
and one token per character keeps step boundaries trivial), a BOS token and any chat template.

Why byte-level BPE and not a character vocabulary: transformers 5.x loads a tokenizer folder whose model
config says ``model_type: qwen2`` as ``Qwen2Tokenizer``, which silently drops the spaces of a
character-level vocabulary; the byte-level alphabet round-trips exactly through that class too.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
NUM_BYTES = 256
VOCAB_SIZE = NUM_BYTES + 2  # 256 bytes + EOS + pad


def byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> unicode map as a list indexed by byte value: printable Latin-1 bytes stand
    for themselves, the others (controls, space, ...) for the code points 256, 257, ... in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(NUM_BYTES):
        if b not in symbols:
            symbols[b] = chr(NUM_BYTES + extra)
            extra += 1
    return [symbols[b] for b in range(NUM_BYTES)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer as a transformers fast tokenizer (save it with ``save_pretrained``).

    Ids 0..255 are the bytes, 256 is EOS (``<|endoftext|>``), 257 is pad (``<|pad|>``). Encoding adds no
    special tokens; decoding with ``skip_special_tokens=True`` drops EOS and pad.
    """
    vocab = {symbol: b for b, symbol in enumerate(byte_symbols())}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, bos_token=None
    )
    if len(tokenizer) != VOCAB_SIZE or tokenizer.eos_token_id != NUM_BYTES:
        raise RuntimeError(f"byte tokenizer built with {len(tokenizer)} tokens, expected {VOCAB_SIZE}")
    return tokenizer
