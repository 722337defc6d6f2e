"""Rollout engine on Hugging Face ``generate``, colocated with the policy (CPU or GPU).

Samples G = ``sampling.n`` completions per prompt from the policy itself (no weight copy): prompts are
expanded to N rows, sorted by length, LEFT-padded with an explicit attention mask and generated in chunks of
at most ``batch_size`` rows; results come back in prompt order with each prompt's samples contiguous.

Sampling is exactly the policy's distribution at the requested temperature, restricted by ``top_p`` only:
every other logits processor that ``generate`` would otherwise take from the checkpoint's
``generation_config.json`` or from transformers' global defaults (``top_k=50``, repetition penalty, ``min_p``,
typical-p, ...) is switched off, because the RLVR loss assumes the rollouts were drawn from pi_old.
Temperature 0 means greedy decoding. A completion is cut just after its first EOS (EOS kept); one without EOS
within ``max_new_tokens`` is marked truncated. The tokenizer's EOS is the only stop token, as in
:mod:`echorl_lightning.rollout.vllm_engine`.

With ``sampling.return_entropy`` each completion also carries the entropy of every sampled token's
distribution at the sampling temperature, computed from the raw logits during decoding (a logits processor that
records and changes nothing), so an exactly on-policy update needs no separate no-grad pass for EchoRL's token
entropies. An optional ``progress`` callable hears after each chunk how many rows it held and how many response
tokens they came to (progress displays, ``echorl_lightning.rollout.progress``).

At temperature 1 and ``top_p=1`` no processor that touches the logits runs (only the entropy recorder, with
``return_entropy``). The defaults follow the CPU measurements in ``benchmarks/RESULTS.md``: chunks smaller
than ``batch_size`` 256 were slower everywhere, larger ones faster on some machines (the demo config takes its
whole rollout of 512 rows in one); rows that sampled EOS leave their chunk every ``compact_every`` new tokens
(:mod:`echorl_lightning.rollout.hf_decode`), which is what makes large chunks pay; a static KV cache was
slower or no faster (``benchmarks/kv_cache.py``), and ``torch.compile`` of the forward over a static cache was
slow to compile and then decoded slower. The cache is a constructor option for other hardware: ``None``
(transformers' dynamic cache, the default) or any ``cache_implementation`` that ``generate`` accepts (never
compacted).

Left out: beam search, stop strings, per-prompt sampling settings, speculative decoding and compiled decoding
(see above; worth measuring again on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from transformers import GenerationConfig, LogitsProcessor

from echorl_lightning.bounds import integer_problem, number_problem, raise_problems
from echorl_lightning.rollout.hf_decode import decode_rows
from echorl_lightning.rollout.types import Completion, SamplingConfig


def special_token_ids(model: torch.nn.Module, tokenizer: Any) -> tuple[int, int]:
    """The ``(eos_id, pad_id)`` used for generation.

    EOS comes from the tokenizer, else from ``model.generation_config`` (the first id when it is a list).
    Pad comes from the tokenizer, else from the generation config, else EOS (used for padding only).
    """
    config = getattr(model, "generation_config", None)

    def first(value: int | Sequence[int] | None) -> int | None:
        if isinstance(value, Sequence):
            return int(value[0]) if len(value) > 0 else None
        return None if value is None else int(value)

    eos_id = first(getattr(tokenizer, "eos_token_id", None))
    if eos_id is None and config is not None:
        eos_id = first(config.eos_token_id)
    if eos_id is None:
        raise ValueError("neither the tokenizer nor model.generation_config defines an EOS token id")
    pad_id = first(getattr(tokenizer, "pad_token_id", None))
    if pad_id is None and config is not None:
        pad_id = first(config.pad_token_id)
    return eos_id, eos_id if pad_id is None else pad_id


def require_unwrapped(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` for a DDP-wrapped policy: engines take the underlying HF model."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise ValueError("rollout engines take the unwrapped policy (ddp_model.module), not the DDP wrapper")


def sampling_problems(sampling: SamplingConfig, prefix: str = "sampling", n_key: str = "n") -> list[str]:
    """The bounds of the sampling settings every engine takes: ``n`` and ``max_new_tokens`` integers >= 1,
    ``temperature`` >= 0 (0 = greedy), ``top_p`` in (0, 1]. One message per problem, each key under ``prefix``
    (``n`` called ``n_key`` there: the rollout group calls it ``group_size``)."""
    problems = [
        integer_problem(f"{prefix}.{n_key}", sampling.n, 1),
        integer_problem(f"{prefix}.max_new_tokens", sampling.max_new_tokens, 1),
        number_problem(f"{prefix}.temperature", sampling.temperature, low=0),
        number_problem(f"{prefix}.top_p", sampling.top_p, low=0, low_open=True, high=1),
    ]
    return [p for p in problems if p]


def validate_request(prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingConfig) -> None:
    """Raise ``ValueError`` naming the offending field or prompt index for a malformed ``generate`` call."""
    raise_problems(*sampling_problems(sampling))
    for index, prompt in enumerate(prompt_token_ids):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} is empty: every prompt needs at least one token")


def generation_config(
    sampling: SamplingConfig,
    eos_id: int,
    pad_id: int,
    use_cache: bool,
    model_defaults: GenerationConfig | None = None,
    cache_implementation: str | None = None,
) -> GenerationConfig:
    """The complete ``GenerationConfig`` of one engine call.

    ``generate`` fills every field left ``None`` from the model's own generation config (``model_defaults``)
    and then from transformers' global defaults (``top_k=50``), so each processor that would change the
    sampling distribution is set to its neutral value here, and none that would change nothing is built:
    ``top_k=0``, ``top_p=1``, ``typical_p=1``, ``temperature=1`` and cutoffs of 0 build no processor, but any
    ``min_p`` that is not ``None`` builds a ``MinPLogitsWarper`` (a softmax, a max and a top-k per token),
    which at ``min_p=0`` removes nothing. So ``min_p`` stays ``None`` (no warper, the same tokens) unless
    ``model_defaults`` sets one, which ``min_p=0.0`` then overrides. ``cache_implementation`` (e.g.
    ``"static"``) is set only when given, so ``None`` keeps whatever ``generate`` would choose.
    """
    common: dict[str, Any] = dict(
        max_new_tokens=sampling.max_new_tokens,
        min_new_tokens=0,
        num_beams=1,
        num_return_sequences=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=use_cache,
    )
    if cache_implementation is not None:
        common["cache_implementation"] = cache_implementation
    if sampling.temperature == 0:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=0,
        min_p=None if getattr(model_defaults, "min_p", None) is None else 0.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        **common,
    )


def cut_at_eos(token_ids: Sequence[int], eos_id: int, max_new_tokens: int) -> Completion:
    """Completion of a raw generated row: cut just after the first EOS (kept), else truncated.

    Anything after the first EOS (padding, or EOS used as pad) is dropped; the row is also capped at
    ``max_new_tokens``.
    """
    row = list(token_ids[:max_new_tokens])
    if eos_id in row:
        return Completion(token_ids=row[: row.index(eos_id) + 1], truncated=False)
    return Completion(token_ids=row, truncated=True)


def _synced_ranks(model: torch.nn.Module | None) -> bool:
    """Whether ``model`` is sharded across ranks (FSDP2: transformers then generates with ``synced_gpus``)."""
    return (
        bool(getattr(model, "_is_fsdp_managed_module", False))
        and dist.is_available()
        and dist.is_initialized()
    )


def _chunks_on_every_rank(model: torch.nn.Module, chunks: int, device: torch.device) -> int:
    """The most ``generate`` calls any rank makes for this request (``chunks`` when not sharded)."""
    if not _synced_ranks(model):
        return chunks
    count = torch.tensor([chunks], device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count.item())


class EntropyRecorder(LogitsProcessor):
    """Records, at each decoding step, the entropy of ``softmax(logits / temperature)`` of every row
    (``H = -sum_v p_v log p_v``); returns the scores unchanged. Runs before the sampling warpers, on the raw
    logits."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []  # one [rows] float32 tensor per decoding step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # [rows, V]
        self.steps.append(-(logp.exp() * logp).sum(-1).cpu())
        return scores

    def per_row(self) -> torch.Tensor:
        """[rows, steps] entropies."""
        return torch.stack(self.steps, dim=1)


class HFGenerateEngine:
    """Colocated rollout engine on ``model.generate`` (see the module docstring).

    Args:
        batch_size: most sequences (rows, one per sample) in one ``generate`` call.
        use_cache: KV cache during generation; passed explicitly so a model with gradient checkpointing
            enabled still decodes with the cache.
        cache_implementation: ``generate``'s KV cache kind, e.g. ``"static"`` (no measurable gain on CPU, see
            the module docstring); ``None`` keeps transformers' dynamic cache.
        compact_every: with the dynamic cache, decode a chunk this many new tokens at a time and drop the rows
            that sampled EOS from the batch and its cache after each segment
            (:mod:`echorl_lightning.rollout.hf_decode`); ``None``: one ``generate`` call per chunk.
    """

    def __init__(
        self,
        batch_size: int = 256,
        use_cache: bool = True,
        cache_implementation: str | None = None,
        compact_every: int | None = 16,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        raise_problems(integer_problem("compact_every", compact_every, 1, optional=True))
        if cache_implementation is not None and not use_cache:
            raise ValueError(f"cache_implementation={cache_implementation!r} needs use_cache=True")
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.cache_implementation = cache_implementation
        self.compact_every = compact_every
        self.model: torch.nn.Module | None = None
        self.eos_id: int | None = None
        self.pad_id: int | None = None

    def setup(self, model: torch.nn.Module, tokenizer: Any) -> None:
        """Keep a reference to the policy and resolve the EOS / pad ids."""
        require_unwrapped(model)
        self.eos_id, self.pad_id = special_token_ids(model, tokenizer)
        self.model = model

    def load_weights(self, model: torch.nn.Module) -> None:
        """Colocated: sample from ``model`` itself (the unwrapped HF model, never a DDP wrapper)."""
        require_unwrapped(model)
        self.model = model

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[Completion]]:
        """``sampling.n`` completions for each prompt, in prompt order; ``progress(rows, tokens)``, when given, is
        called after each generated chunk with its row count and response token count (EOS included).

        With ``sampling.seed`` set the result is reproducible (for a fixed ``batch_size``, ``compact_every`` and
        device) and the caller's global RNG state is restored afterwards; with ``None`` sampling draws from, and
        advances, the global generator.
        """
        if self.model is None or self.eos_id is None or self.pad_id is None:
            raise RuntimeError("HFGenerateEngine.generate called before setup(model, tokenizer)")
        validate_request(prompt_token_ids, sampling)
        if len(prompt_token_ids) == 0 and not _synced_ranks(self.model):
            return []

        model, n = self.model, sampling.n
        rows = [(index, sample) for index in range(len(prompt_token_ids)) for sample in range(n)]
        rows.sort(key=lambda row: len(prompt_token_ids[row[0]]))  # stable: a prompt's samples stay in order
        config = generation_config(
            sampling,
            self.eos_id,
            self.pad_id,
            self.use_cache,
            getattr(model, "generation_config", None),
            self.cache_implementation,
        )
        device = next(model.parameters()).device
        cuda_devices: list[int] = []
        if device.type == "cuda":
            cuda_devices.append(device.index if device.index is not None else torch.cuda.current_device())
        results: list[list[Completion | None]] = [[None] * n for _ in prompt_token_ids]

        was_training = model.training
        model.eval()
        try:
            with (
                torch.random.fork_rng(devices=cuda_devices, enabled=sampling.seed is not None),
                torch.no_grad(),
            ):
                if sampling.seed is not None:
                    torch.default_generator.manual_seed(sampling.seed)
                    for index in cuda_devices:
                        with torch.cuda.device(index):
                            torch.cuda.manual_seed(sampling.seed)
                starts = list(range(0, len(rows), self.batch_size))
                for _ in range(_chunks_on_every_rank(model, len(starts), device) - len(starts)):
                    # a sharded (FSDP2) model: every forward is a collective, so a rank with fewer chunks
                    # joins the others' generate calls with a one-token dummy row and drops its output
                    pad_ids, pad_mask = self._left_pad([[self.pad_id]], device)
                    model.generate(input_ids=pad_ids, attention_mask=pad_mask, generation_config=config)
                compact = None if _synced_ranks(model) else self.compact_every
                for start in starts:
                    chunk = rows[start : start + self.batch_size]
                    prompts = [prompt_token_ids[index] for index, _ in chunk]
                    input_ids, attention_mask = self._left_pad(prompts, device)  # [rows, P] each
                    recorder = None
                    if sampling.return_entropy and sampling.temperature > 0:
                        recorder = partial(EntropyRecorder, sampling.temperature)
                    new_tokens, entropies = decode_rows(
                        model, input_ids, attention_mask, config, self.eos_id, compact, recorder
                    )  # [rows, new] each
                    chunk_tokens = 0
                    for i, ((index, sample), row) in enumerate(zip(chunk, new_tokens, strict=True)):
                        completion = cut_at_eos(row, self.eos_id, sampling.max_new_tokens)
                        if entropies is not None:
                            completion = replace(
                                completion, entropy=entropies[i][: len(completion.token_ids)]
                            )
                        results[index][sample] = completion
                        chunk_tokens += len(completion.token_ids)
                    if progress is not None:
                        progress(len(chunk), chunk_tokens)
        finally:
            model.train(was_training)
        assert all(completion is not None for samples in results for completion in samples)
        return results  # type: ignore[return-value]

    def _left_pad(
        self, prompts: Sequence[Sequence[int]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids`` [rows, P] and ``attention_mask`` [rows, P] (1 on prompt tokens)."""
        assert self.pad_id is not None
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        return input_ids.to(device), attention_mask.to(device)
