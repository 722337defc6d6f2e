"""A byte-level BPE tokenizer trained on a task's own texts, for the embedded tiny models.

The shipped tiny models use :func:`recipes.tiny.tokenizer.build_tokenizer`: one token per byte, so a
~250-character Countdown trace is ~250 tokens, and generation and the update pay for every one. This file
trains merges on top of that same alphabet with ``tokenizers``' ``BpeTrainer`` and keeps the byte
tokenizer's ids: ids 0..255 are the bytes (GPT-2's byte-to-unicode symbols), 256 is EOS
(``<|endoftext|>``), 257 is pad (``<|pad|>``), and the learned merges follow from 258 in the order the
trainer learned them. Every string round-trips exactly (byte-level); a newline may be merged into a longer
token (``"]\\n"``), which EchoRL's step splitter counts as a step end (``echo.steps.delimiter_token_ids``
matches every token whose text contains the delimiter).

The pre-tokenization decides what merges can exist, and it must be the one the folder is loaded with:

* ``"qwen2"``: Qwen2's own pre-tokenizer (its regex, then byte-level). transformers 5.x loads every
  tokenizer folder whose model config says ``model_type: qwen2`` as ``Qwen2Tokenizer``, which rebuilds
  that pre-tokenizer whatever ``tokenizer.json`` says, so a tiny Qwen2 must use this one. Its regex splits
  every digit on its own (as Qwen2.5 tokenizes numbers), so merges join only punctuation and letters;
* ``"gpt2"``: GPT-2's regex (numbers with their leading space, `` 17``, are one pre-token), so numbers
  merge too. A folder whose model type has no tokenizer class of its own (a Llama config, for one) is
  loaded as a generic fast tokenizer that keeps this pre-tokenizer; a ``qwen2`` folder would not.

A task's tokenizer folder for :class:`~recipes.tiny.sft.SFTModule`'s ``tokenizer_path``::

    python -m recipes.tiny.bpe --task countdown --vocab-size 512 --pre-tokenization gpt2 \
        --out runs/countdown_bpe

trains on the prompts and worked solutions of the task's first ``--texts`` ``train`` problems (the held-out
splits are never read).

Left out: a unigram or WordPiece model, dropout, and any chat template.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Literal, get_args

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from recipes.tiny.tokenizer import EOS_TOKEN, NUM_BYTES, PAD_TOKEN, VOCAB_SIZE, byte_symbols

PreTokenization = Literal["qwen2", "gpt2"]
PRE_TOKENIZATIONS: tuple[str, ...] = get_args(PreTokenization)


def _pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    if kind == "qwen2":
        # the regex transformers' Qwen2Tokenizer rebuilds on load (imported, so the two cannot drift apart)
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        split = pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise ValueError(f"pre_tokenization must be one of {', '.join(PRE_TOKENIZATIONS)}; got {kind!r}")


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, pre_tokenization: PreTokenization = "qwen2"
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the byte tokenizer's ids plus merges learned on ``texts``.

    Args:
        texts: the training texts (prompts and responses as the model will see them).
        vocab_size: the largest vocabulary wanted, special tokens included (>= 258, the byte tokenizer's
            size). The result can be smaller: the trainer stops when no pair of the texts is left to merge.
        pre_tokenization: ``"qwen2"`` or ``"gpt2"`` (see the module docstring: it must match how the
            folder will be loaded).

    Returns:
        A transformers fast tokenizer (EOS and pad set, no BOS); ``len(tokenizer)`` is its vocabulary.
    """
    if vocab_size < VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {VOCAB_SIZE} (256 bytes + EOS + pad); got {vocab_size}")
    pre = _pre_tokenizer(pre_tokenization)
    probe = Tokenizer(BPE())
    probe.pre_tokenizer = pre
    # the alphabet is the 256 byte symbols; the two special tokens are added below at their fixed ids
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - (VOCAB_SIZE - NUM_BYTES), initial_alphabet=byte_symbols(), show_progress=False
    )
    probe.train_from_iterator(texts, trainer)
    merges = [tuple(pair) for pair in json.loads(probe.to_str())["model"]["merges"]]

    vocab = {symbol: b for b, symbol in enumerate(byte_symbols())}
    vocab[EOS_TOKEN], vocab[PAD_TOKEN] = NUM_BYTES, NUM_BYTES + 1
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    backend = Tokenizer(BPE(vocab=vocab, merges=merges))
    if pre_tokenization == "qwen2":
        backend.normalizer = normalizers.NFC()  # as Qwen2Tokenizer, so encodings match after a reload
    backend.pre_tokenizer = pre
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS_TOKEN, PAD_TOKEN])  # already in the vocabulary: they keep 256 and 257
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, bos_token=None
    )
    if tokenizer.eos_token_id != NUM_BYTES or tokenizer.pad_token_id != NUM_BYTES + 1:
        raise RuntimeError(
            f"BPE tokenizer built with EOS id {tokenizer.eos_token_id} and pad id {tokenizer.pad_token_id}, "
            f"expected {NUM_BYTES} and {NUM_BYTES + 1}"
        )
    return tokenizer


def task_texts(task: str, num: int, seed: int = 0) -> list[str]:
    """``prompt + solution`` of problems ``0..num-1`` of ``task``'s ``train`` split (``"countdown"`` or
    ``"arithmetic"``, at the task's default difficulty)."""
    if task == "countdown":
        from echorl_lightning.tasks.countdown.problems import make_problems
    elif task == "arithmetic":
        from echorl_lightning.tasks.arithmetic.problems import make_problems
    else:
        raise ValueError(f"task must be countdown or arithmetic; got {task!r}")
    return [p.prompt + p.solution for p in make_problems("train", num, seed)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a task BPE tokenizer and save it as a folder.")
    parser.add_argument("--task", required=True, choices=["countdown", "arithmetic"])
    parser.add_argument("--out", required=True, help="the tokenizer folder to write")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--pre-tokenization", choices=PRE_TOKENIZATIONS, default="gpt2")
    parser.add_argument("--texts", type=int, default=4096, help="train problems to learn merges from")
    parser.add_argument("--seed", type=int, default=0, help="the task generator's seed")
    args = parser.parse_args(argv)
    tokenizer = train_bpe_tokenizer(
        task_texts(args.task, args.texts, args.seed), args.vocab_size, args.pre_tokenization
    )
    tokenizer.save_pretrained(args.out)
    print(
        f"{args.out}: {len(tokenizer)} tokens ({args.pre_tokenization} pre-tokenization, {args.texts} {args.task} texts)"
    )


if __name__ == "__main__":
    main()
