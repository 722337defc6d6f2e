"""Rollout engine on a colocated vLLM ``LLM`` (one engine per training rank, on the rank's own GPU).

A thin adapter over vLLM's public offline API (``vllm.LLM``, ``SamplingParams``, token-id prompts):

* ``setup`` builds the ``LLM`` from the policy's checkpoint path. On more than one rank it uses
  ``distributed_executor_backend="external_launcher"`` (vLLM joins the trainer's torch.distributed world, one
  engine per rank, as TRL's ``vllm_mode="colocate"`` does) and offsets the engine seed by the rank. The engine
  core always runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weight sync passes tensors by
  reference.
* ``load_weights`` streams the policy's state dict, under Hugging Face names, into vLLM's model through
  ``LLM.apply_model(fn)`` (vllm/entrypoints/llm.py: runs ``fn`` on the model inside each worker), and resets
  the prefix cache: cached KV blocks were computed with the old weights.
* ``generate`` samples with one ``SamplingParams`` per prompt and converts the outputs; with
  ``enable_sleep_mode`` the engine sleeps (level 1: weights offloaded to CPU, KV cache freed) between
  rollouts, so the optimizer step gets the GPU memory back.

Stopping: the tokenizer is not loaded by vLLM (``skip_tokenizer_init``) and the checkpoint's
``generation_config.json`` is ignored (``generation_config="vllm"``), so the only stop token is the trainer's
EOS, passed as ``stop_token_ids``, and sampling is exactly temperature + top-p, as in
:mod:`echorl_lightning.rollout.hf_engine`. Seeds: prompt i of a call gets ``seed + i * n`` and vLLM gives its
j-th sample ``seed + i * n + j``, so every sample of a call has its own seed.

Left out: tensor parallelism inside one rank, LoRA adapters, FSDP/DeepSpeed-sharded policies (the full state
dict must be on this rank), stop strings, logprobs from vLLM (the trainer recomputes them).
vLLM is imported lazily inside methods: this module imports without it. Part of echorl-lightning, the
implementation of EchoRL (arXiv 2605.31228).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from echorl_lightning.rollout.hf_engine import (
    cut_at_eos,
    require_unwrapped,
    special_token_ids,
    validate_request,
)
from echorl_lightning.rollout.types import Completion, SamplingConfig

#: Module-wrapper fragments that never appear in vLLM's parameter names (torch.compile, activation checkpoint).
WRAPPER_FRAGMENTS = ("_orig_mod.", "_checkpoint_wrapped_module.")


def to_vllm_prompts(prompt_token_ids: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """vLLM ``TokensPrompt`` inputs (a TypedDict, so plain dicts) for token-id prompts."""
    return [{"prompt_token_ids": [int(token) for token in prompt]} for prompt in prompt_token_ids]


def sampling_kwargs(
    sampling: SamplingConfig, *, eos_id: int | None = None, prompt_index: int = 0
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for prompt ``prompt_index`` of a call.

    Temperature 0 is greedy, for which vLLM requires ``n == 1``: the caller repeats that one sample
    ``sampling.n`` times. With a seed, prompt i gets ``seed + i * sampling.n`` (vLLM adds the sample index).
    ``detokenize=False``: only token ids are used.
    """
    greedy = sampling.temperature == 0
    kwargs: dict[str, Any] = dict(
        n=1 if greedy else sampling.n,
        temperature=sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        max_tokens=sampling.max_new_tokens,
        seed=None if sampling.seed is None else sampling.seed + prompt_index * sampling.n,
        detokenize=False,
    )
    if eos_id is not None:
        kwargs["stop_token_ids"] = [eos_id]
    return kwargs


def completion_from_sample(
    token_ids: Sequence[int], finish_reason: str | None, eos_id: int, max_new_tokens: int
) -> Completion:
    """One vLLM ``CompletionOutput`` as a :class:`Completion`.

    vLLM keeps the EOS / stop token in ``token_ids`` when it stops on it (``check_stop`` in
    ``vllm/v1/core/sched/utils.py`` stops after appending it), so an EOS there means finished. A sample that
    ended with ``finish_reason == "stop"`` without EOS (a stop string, or another stop token id) gets EOS
    appended (replacing its last token if it is already ``max_new_tokens`` long). Any other reason
    (``"length"``: max_tokens or max_model_len; ``"abort"``) without EOS is truncated.
    """
    ids = [int(token) for token in token_ids]
    if eos_id in ids[:max_new_tokens]:
        return cut_at_eos(ids, eos_id, max_new_tokens)
    if finish_reason == "stop":
        return Completion(token_ids=ids[: max_new_tokens - 1] + [eos_id], truncated=False)
    return Completion(token_ids=ids[:max_new_tokens], truncated=True)


def completions_from_outputs(
    outputs: Sequence[Any], n: int, eos_id: int, max_new_tokens: int
) -> list[list[Completion]]:
    """vLLM ``RequestOutput`` list (one per prompt, in prompt order) as ``n`` completions per prompt.

    Samples are ordered by their ``index``. Raises ``ValueError`` naming the prompt when it has not exactly
    ``n`` samples or a sample is unfinished (``finish_reason`` None).
    """
    result: list[list[Completion]] = []
    for prompt_index, output in enumerate(outputs):
        samples = list(output.outputs)
        if len(samples) != n:
            raise ValueError(
                f"vLLM returned {len(samples)} samples for prompt {prompt_index}, expected n={n}"
            )
        samples.sort(key=lambda sample: getattr(sample, "index", 0))
        completions = []
        for sample_index, sample in enumerate(samples):
            if sample.finish_reason is None:
                raise ValueError(f"vLLM sample {sample_index} of prompt {prompt_index} is unfinished")
            completions.append(
                completion_from_sample(sample.token_ids, sample.finish_reason, eos_id, max_new_tokens)
            )
        result.append(completions)
    return result


def vllm_weight_name(name: str) -> str:
    """A policy state-dict key as vLLM's ``load_weights`` expects it (HF naming, wrapper fragments removed)."""
    for fragment in WRAPPER_FRAGMENTS:
        name = name.replace(fragment, "")
    return name


def hf_weight_items(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs of the policy's state dict, lazily, without copies (vLLM copies and casts)."""
    for name, tensor in model.state_dict().items():
        yield vllm_weight_name(name), tensor


class VLLMEngine:
    """Colocated vLLM rollout engine (see the module docstring).

    Args:
        model: checkpoint path or hub id the ``LLM`` is built from; None uses the policy's ``name_or_path``.
            The weights are overwritten by ``load_weights`` before every rollout, so only the architecture,
            vocabulary and config must match the policy.
        dtype: vLLM's weight and activation dtype.
        gpu_memory_utilization: fraction of the GPU vLLM may take (weights + KV cache); the rest is training's.
        enable_sleep_mode: offload weights and free the KV cache between rollouts (``LLM.sleep(level=1)``).
        max_model_len: prompt + response token limit; None takes the model config's.
        enforce_eager: no CUDA graphs (faster start, slower decoding).
        seed: engine seed (used when a rollout passes no seed); rank r uses ``seed + r``.
        enable_prefix_caching: reuse KV blocks of shared prompt prefixes (the G samples of a prompt).
    """

    def __init__(
        self,
        model: str | None = None,
        dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        enable_sleep_mode: bool = False,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        enable_prefix_caching: bool = True,
    ) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if max_model_len is not None and max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2 or None, got {max_model_len}")
        self.model = model
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enable_sleep_mode = enable_sleep_mode
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.enable_prefix_caching = enable_prefix_caching
        self.llm: Any = None
        self.eos_id: int | None = None
        self._asleep: set[str] = set()  # vLLM memory tags ("weights", "kv_cache") currently released

    def llm_kwargs(self, model_path: str, rank: int, world_size: int) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` for this rank (no vLLM import; used by :meth:`setup`)."""
        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=self.dtype,
            seed=self.seed + rank,
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_sleep_mode=self.enable_sleep_mode,
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            enable_prefix_caching=self.enable_prefix_caching,
            tensor_parallel_size=1,
            skip_tokenizer_init=True,
            generation_config="vllm",
        )
        if world_size > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        return kwargs

    def setup(self, model: torch.nn.Module, tokenizer: Any) -> None:
        """Build this rank's ``LLM`` (once) from ``self.model`` or the policy's ``name_or_path``."""
        require_unwrapped(model)
        self.eos_id, _ = special_token_ids(model, tokenizer)
        if self.llm is not None:
            return
        model_path = self.model or getattr(model, "name_or_path", "") or ""
        if not model_path:
            raise ValueError(
                "VLLMEngine needs a checkpoint to build its LLM: the policy has no name_or_path, "
                "set the engine's `model` init arg"
            )
        rank, world_size = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        # In-process engine core: required by external_launcher (vllm/v1/executor/uniproc_executor.py asserts
        # it) and what lets apply_model hand the policy's tensors to vLLM's model by reference.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if world_size > 1:
            self._export_launcher_env(rank, world_size)
        from vllm import LLM

        self.llm = LLM(**self.llm_kwargs(model_path, rank, world_size))
        if self.enable_sleep_mode:
            self._sleep()

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy the policy's current weights into vLLM's model, then drop the stale prefix cache."""
        require_unwrapped(model)
        llm = self._require_llm()
        self._wake(["weights"])
        weights = hf_weight_items(model)
        llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
        llm.reset_prefix_cache()

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """``sampling.n`` completions for each prompt, in prompt order."""
        validate_request(prompt_token_ids, sampling)
        if len(prompt_token_ids) == 0:
            return []
        llm = self._require_llm()
        assert self.eos_id is not None
        from vllm import SamplingParams

        self._wake(["weights", "kv_cache"])
        if sampling.seed is None:
            params: Any = SamplingParams(**sampling_kwargs(sampling, eos_id=self.eos_id))
        else:
            params = [
                SamplingParams(**sampling_kwargs(sampling, eos_id=self.eos_id, prompt_index=index))
                for index in range(len(prompt_token_ids))
            ]
        outputs = llm.generate(to_vllm_prompts(prompt_token_ids), sampling_params=params, use_tqdm=False)
        if len(outputs) != len(prompt_token_ids):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompt_token_ids)} prompts")
        n_requested = 1 if sampling.temperature == 0 else sampling.n
        completions = completions_from_outputs(outputs, n_requested, self.eos_id, sampling.max_new_tokens)
        if n_requested != sampling.n:  # greedy: the n samples are the one greedy answer
            completions = [samples * sampling.n for samples in completions]
        if self.enable_sleep_mode:
            self._sleep()
        return completions

    # ---- engine state ----------------------------------------------------------------------------------
    def _require_llm(self) -> Any:
        if self.llm is None:
            raise RuntimeError("VLLMEngine used before setup(model, tokenizer)")
        return self.llm

    def _sleep(self) -> None:
        self.llm.sleep(level=1)
        self._asleep = {"weights", "kv_cache"}

    def _wake(self, tags: list[str]) -> None:
        pending = [tag for tag in tags if tag in self._asleep]
        if pending:
            torch.cuda.empty_cache()  # hand the training step's cached blocks back before vLLM re-maps memory
            self.llm.wake_up(tags=pending)
            self._asleep.difference_update(pending)

    @staticmethod
    def _export_launcher_env(rank: int, world_size: int) -> None:
        """torchrun-style variables that external_launcher reads (env:// rendezvous), from the live world."""
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        os.environ.setdefault("LOCAL_RANK", str(torch.cuda.current_device()))
        missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
        if missing:
            raise RuntimeError(
                f"VLLMEngine on {world_size} ranks needs {', '.join(missing)} in the environment"
            )
