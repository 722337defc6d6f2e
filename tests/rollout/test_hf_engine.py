"""HFGenerateEngine on the real tiny Qwen2 (CPU).

Besides the random-init model, several tests use a *controlled* copy whose next-token logits depend only on
the current token (see :func:`controlled_model`), so expected outputs and sampling supports can be written by
hand.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2ForCausalLM

from echorl_lightning.rollout import Completion, HFGenerateEngine, RolloutEngine, SamplingConfig, hf_engine
from echorl_lightning.rollout.hf_engine import cut_at_eos, generation_config, special_token_ids

EOS, PAD = 256, 257
TOK_A, TOK_B = 65, 66  # "A", "B"


def controlled_model(
    base: Qwen2ForCausalLM, logits: torch.Tensor, state_of: dict[int, int]
) -> Qwen2ForCausalLM:
    """A copy of ``base`` whose next-token logits are ``logits[state_of.get(current_token, 0)]``.

    Every token embeds to the unit vector e_s of its state s; all attention (o_proj) and MLP (down_proj)
    outputs are zeroed, so the residual stream stays e_s. The final RMSNorm (weight 1) maps e_s to
    sqrt(d) * e_s (up to its eps, a relative 2e-5), hence ``lm_head.weight[:, s] = logits[s] / sqrt(d)``
    yields ``logits[s]`` exactly as given.

    Args:
        logits: [S, V] next-token logits per state.
        state_of: token id -> state index (default state 0).
    """
    model = copy.deepcopy(base)
    hidden = model.config.hidden_size
    with torch.no_grad():
        embed = torch.zeros_like(model.model.embed_tokens.weight)  # [V, d]
        states = torch.zeros(embed.shape[0], dtype=torch.long)
        for token, state in state_of.items():
            states[token] = state
        embed[torch.arange(embed.shape[0]), states] = 1.0
        model.model.embed_tokens.weight.copy_(embed)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros_like(model.lm_head.weight)  # [V, d]
        head[:, : logits.shape[0]] = logits.T / math.sqrt(hidden)
        model.lm_head.weight.copy_(head)
    return model


def engine_for(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, batch_size: int = 256
) -> HFGenerateEngine:
    engine = HFGenerateEngine(batch_size=batch_size)
    engine.setup(model, tokenizer)
    return engine


def random_prompts(lengths: list[int], seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (length,), generator=generator).tolist() for length in lengths]


def assert_contract(completions: list[list[Completion]], n: int, max_new_tokens: int) -> None:
    """n per prompt; <= max_new_tokens; EOS exactly once and last, or truncated at exactly max_new_tokens."""
    for samples in completions:
        assert len(samples) == n
        for completion in samples:
            ids = completion.token_ids
            assert len(ids) <= max_new_tokens
            if completion.truncated:
                assert EOS not in ids and len(ids) == max_new_tokens
            else:
                assert ids.count(EOS) == 1 and ids[-1] == EOS


def test_engine_satisfies_protocol() -> None:
    assert isinstance(HFGenerateEngine(), RolloutEngine)


def test_cut_at_eos_hand_computed() -> None:
    # first EOS kept, everything after (pad, or EOS reused as pad) dropped
    assert cut_at_eos([5, EOS, PAD, PAD], EOS, 4) == Completion([5, EOS], truncated=False)
    assert cut_at_eos([5, EOS, EOS, EOS], EOS, 4) == Completion([5, EOS], truncated=False)
    assert cut_at_eos([EOS], EOS, 4) == Completion([EOS], truncated=False)
    # no EOS within max_new_tokens = 3 -> truncated, capped at 3 (an EOS at position 4 does not count)
    assert cut_at_eos([5, 6, 7, EOS], EOS, 3) == Completion([5, 6, 7], truncated=True)


def test_generation_config_neutralises_every_processor() -> None:
    sampled = generation_config(SamplingConfig(max_new_tokens=7, temperature=0.7, top_p=0.9), EOS, PAD, True)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.top_k) == (True, 0.7, 0.9, 0)
    assert (sampled.repetition_penalty, sampled.min_p, sampled.typical_p) == (1.0, None, 1.0)
    assert (sampled.max_new_tokens, sampled.eos_token_id, sampled.pad_token_id) == (7, EOS, PAD)
    assert sampled.use_cache is True
    greedy = generation_config(SamplingConfig(temperature=0.0), EOS, PAD, False)
    assert greedy.do_sample is False and greedy.repetition_penalty == 1.0 and greedy.use_cache is False
    # a checkpoint min_p would fill the None: it is overridden by the neutral 0.0 instead
    sampled = generation_config(SamplingConfig(), EOS, PAD, True, GenerationConfig(min_p=0.3))
    assert sampled.min_p == 0.0


def logits_processors(model: Qwen2ForCausalLM, config: GenerationConfig) -> list[str]:
    """Names of the processors ``generate`` builds for ``config`` after merging the model's defaults."""
    merged, _ = model._prepare_generation_config(config)
    processors = model._get_logits_processor(
        generation_config=merged,
        input_ids_seq_length=3,
        encoder_input_ids=None,
        prefix_allowed_tokens_fn=None,
        logits_processor=None,
        device="cpu",
    )
    return [type(processor).__name__ for processor in processors]


def test_no_op_processors_are_not_built(tiny_random_model) -> None:
    model = copy.deepcopy(tiny_random_model)
    # T = 1, top_p = 1: the exact distribution needs no processor at all (a MinPLogitsWarper at min_p = 0
    # used to run a softmax, a max and a top-k on every token for nothing)
    config = generation_config(
        SamplingConfig(temperature=1.0, top_p=1.0), EOS, PAD, True, model.generation_config
    )
    assert logits_processors(model, config) == []
    # the ones that change sampling are still built
    config = generation_config(
        SamplingConfig(temperature=0.5, top_p=0.9), EOS, PAD, True, model.generation_config
    )
    assert logits_processors(model, config) == ["TemperatureLogitsWarper", "TopPLogitsWarper"]
    # a checkpoint min_p = 0.3 is neutralised by min_p = 0.0 (that warper, removing nothing, is the price)
    model.generation_config.min_p = 0.3
    config = generation_config(SamplingConfig(), EOS, PAD, True, model.generation_config)
    assert logits_processors(model, config) == ["MinPLogitsWarper"]


def test_no_op_min_p_removal_keeps_tokens(tiny_random_model, tiny_tokenizer, monkeypatch) -> None:
    # the same seed samples the same tokens with the old no-op MinPLogitsWarper(min_p=0) as without it:
    # min_p = 0 removes the tokens with probability < 0 * max probability, i.e. none
    prompts = random_prompts([5, 2, 7], seed=6)
    sampling = SamplingConfig(n=4, max_new_tokens=12, seed=5)
    engine = engine_for(tiny_random_model, tiny_tokenizer, batch_size=8)
    without = engine.generate(prompts, sampling)

    def patched(**overrides: float) -> None:
        def config(*args: object) -> GenerationConfig:
            built = generation_config(sampling, EOS, PAD, True)
            built.update(**overrides)
            return built

        monkeypatch.setattr(hf_engine, "generation_config", config)

    patched(min_p=0.0)
    assert logits_processors(tiny_random_model, hf_engine.generation_config()) == ["MinPLogitsWarper"]
    assert engine.generate(prompts, sampling) == without
    # the comparison can fail: a warper that does change the distribution changes the tokens
    patched(min_p=0.5)
    assert engine.generate(prompts, sampling) != without


def test_chain_model_greedy_hand_computed(tiny_random_model, tiny_tokenizer) -> None:
    # state 0 (any other token) -> "A"; "A" (state 1) -> "B"; "B" (state 2) -> EOS; winning logit 5, rest 0
    logits = torch.zeros(3, len(tiny_tokenizer))
    logits[0, TOK_A], logits[1, TOK_B], logits[2, EOS] = 5.0, 5.0, 5.0
    model = controlled_model(tiny_random_model, logits, {TOK_A: 1, TOK_B: 2})
    engine = engine_for(model, tiny_tokenizer, batch_size=2)
    # prompts of lengths 3, 1, 1 (sorted and split over two generate calls), answers come back in prompt order
    prompts = [[10, 11, 12], [TOK_A], [TOK_B]]
    out = engine.generate(prompts, SamplingConfig(n=2, max_new_tokens=4, temperature=0.0))
    assert out == [
        [Completion([TOK_A, TOK_B, EOS], False)] * 2,
        [Completion([TOK_B, EOS], False)] * 2,
        [Completion([EOS], False)] * 2,
    ]
    # max_new_tokens = 2: the first prompt stops at "A B" without EOS
    out = engine.generate(prompts, SamplingConfig(n=1, max_new_tokens=2, temperature=0.0))
    assert out == [
        [Completion([TOK_A, TOK_B], True)],
        [Completion([TOK_B, EOS], False)],
        [Completion([EOS], False)],
    ]


def test_contract_both_branches(tiny_random_model, tiny_tokenizer) -> None:
    # i.i.d. tokens with P(EOS) = 0.25: P(no EOS in 5 steps) = 0.75^5 = 0.237, so 48 rows show both branches
    vocab = len(tiny_tokenizer)
    probs = torch.full((vocab,), 0.75 / (vocab - 1))
    probs[EOS] = 0.25
    model = controlled_model(tiny_random_model, probs.log()[None], {})
    engine = engine_for(model, tiny_tokenizer, batch_size=16)
    out = engine.generate(random_prompts([4, 2, 6], seed=0), SamplingConfig(n=16, max_new_tokens=5, seed=1))
    assert_contract(out, n=16, max_new_tokens=5)
    flags = [completion.truncated for samples in out for completion in samples]
    assert any(flags) and not all(flags)


def test_greedy_matches_unbatched_generate(tiny_random_model, tiny_tokenizer) -> None:
    prompts = random_prompts([5, 1, 9, 3, 7], seed=2)
    # batch_size 3: prompts of different lengths share a left-padded batch
    engine = engine_for(tiny_random_model, tiny_tokenizer, batch_size=3)
    out = engine.generate(prompts, SamplingConfig(n=2, max_new_tokens=6, temperature=0.0))
    assert_contract(out, n=2, max_new_tokens=6)
    for prompt, samples in zip(prompts, out, strict=True):
        direct = tiny_random_model.generate(
            input_ids=torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=6,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )  # [1, len(prompt) + new]
        expected = cut_at_eos(direct[0, len(prompt) :].tolist(), EOS, 6)
        assert samples == [expected, expected]
    # the prompts really give different answers, so a mix-up of their order would show
    assert len({tuple(samples[0].token_ids) for samples in out}) > 1


def test_top_p_hand_computed(tiny_random_model, tiny_tokenizer) -> None:
    # P(A) = 0.5, P(B) = 0.3, the other 256 tokens (EOS included) share 0.2. Nucleus 0.6: ascending cumulative
    # mass of the tail is 0.2 <= 1 - 0.6 = 0.4 (dropped), with B it is 0.5 > 0.4 (kept) -> support {A, B}.
    vocab = len(tiny_tokenizer)
    probs = torch.full((vocab,), 0.2 / (vocab - 2))
    probs[TOK_A], probs[TOK_B] = 0.5, 0.3
    model = controlled_model(tiny_random_model, probs.log()[None], {})
    engine = engine_for(model, tiny_tokenizer)
    nucleus = engine.generate([[1, 2]], SamplingConfig(n=32, max_new_tokens=4, top_p=0.6, seed=0))
    tokens = {token for completion in nucleus[0] for token in completion.token_ids}
    assert tokens == {TOK_A, TOK_B}
    full = engine.generate([[1, 2]], SamplingConfig(n=32, max_new_tokens=4, top_p=1.0, seed=0))
    assert {token for completion in full[0] for token in completion.token_ids} - {TOK_A, TOK_B}


def test_temperature_sharpens(tiny_random_model, tiny_tokenizer) -> None:
    # logits A = 1, B = 0, all others -30: P(A) = 1/(1+e^-1) = 0.731 at T=1 and 1/(1+e^-4) = 0.982 at T=0.25
    logits = torch.full((1, len(tiny_tokenizer)), -30.0)
    logits[0, TOK_A], logits[0, TOK_B] = 1.0, 0.0
    engine = engine_for(controlled_model(tiny_random_model, logits, {}), tiny_tokenizer)

    def frac_a(temperature: float) -> float:
        out = engine.generate([[1]], SamplingConfig(n=64, max_new_tokens=4, temperature=temperature, seed=3))
        tokens = [token for completion in out[0] for token in completion.token_ids]
        return tokens.count(TOK_A) / len(tokens)

    assert 0.6 < frac_a(1.0) < 0.85
    assert frac_a(0.25) > 0.95


def test_checkpoint_and_global_generation_defaults_are_ignored(tiny_random_model, tiny_tokenizer) -> None:
    # near-uniform, strictly decreasing logits -0.005 * v (no ties, so top-k would really cut): a checkpoint
    # top_k=1 would leave token 0 only, the global default top_k=50 tokens 0..49. 512 draws from the full
    # distribution (probabilities within a factor e^1.3 of each other) hit well over 100 distinct tokens.
    logits = -0.005 * torch.arange(len(tiny_tokenizer), dtype=torch.float32)[None]
    model = controlled_model(tiny_random_model, logits, {})
    model.generation_config.top_k = 1
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.temperature = 0.01
    out = engine_for(model, tiny_tokenizer).generate([[1]], SamplingConfig(n=64, max_new_tokens=8, seed=0))
    tokens = [token for completion in out[0] for token in completion.token_ids]
    assert len(set(tokens)) > 100
    # greedy with logits A = 1, B = 0.5, rest -30 repeats A; the checkpoint's repetition penalty 5 would turn
    # A's logit into 1 / 5 = 0.2 < 0.5 once A has been generated, giving A B ...
    logits = torch.full((1, len(tiny_tokenizer)), -30.0)
    logits[0, TOK_A], logits[0, TOK_B] = 1.0, 0.5
    model = controlled_model(tiny_random_model, logits, {})
    model.generation_config.repetition_penalty = 5.0
    out = engine_for(model, tiny_tokenizer).generate([[1]], SamplingConfig(max_new_tokens=4, temperature=0.0))
    assert out == [[Completion([TOK_A] * 4, truncated=True)]]


def test_seed_reproducible_and_sensitive(tiny_random_model, tiny_tokenizer) -> None:
    engine = engine_for(tiny_random_model, tiny_tokenizer, batch_size=4)
    prompts = random_prompts([3, 6], seed=4)
    first = engine.generate(prompts, SamplingConfig(n=3, max_new_tokens=8, seed=7))
    again = engine.generate(prompts, SamplingConfig(n=3, max_new_tokens=8, seed=7))
    other = engine.generate(prompts, SamplingConfig(n=3, max_new_tokens=8, seed=8))
    assert first == again
    assert first != other
    assert first[0][0] != first[0][1]  # the samples of one prompt differ from each other


def test_global_rng_untouched_with_seed(tiny_random_model, tiny_tokenizer) -> None:
    engine = engine_for(tiny_random_model, tiny_tokenizer)
    before = torch.get_rng_state()
    engine.generate([[1, 2, 3]], SamplingConfig(n=2, max_new_tokens=4, seed=0))
    assert torch.equal(torch.get_rng_state(), before)
    # without a seed, sampling draws from (and advances) the global generator: the check above can fail
    engine.generate([[1, 2, 3]], SamplingConfig(n=2, max_new_tokens=4, seed=None))
    assert not torch.equal(torch.get_rng_state(), before)
    torch.set_rng_state(before)


def test_eval_during_generation_and_mode_restored(tiny_random_model, tiny_tokenizer) -> None:
    model = copy.deepcopy(tiny_random_model)
    seen: list[bool] = []
    model.model.register_forward_hook(lambda module, args, output: seen.append(module.training))
    engine = engine_for(model, tiny_tokenizer)
    model.train()
    engine.generate([[1, 2]], SamplingConfig(n=1, max_new_tokens=3, seed=0))
    assert model.training and seen and not any(seen)
    model.eval()
    engine.generate([[1, 2]], SamplingConfig(n=1, max_new_tokens=3, seed=0))
    assert not model.training


def test_gradient_checkpointing_model(tiny_random_model, tiny_tokenizer) -> None:
    prompts = random_prompts([4, 2], seed=5)
    sampling = SamplingConfig(n=2, max_new_tokens=6, seed=11)
    expected = engine_for(tiny_random_model, tiny_tokenizer).generate(prompts, sampling)
    model = copy.deepcopy(tiny_random_model)
    model.gradient_checkpointing_enable()
    model.train()
    out = engine_for(model, tiny_tokenizer).generate(prompts, sampling)
    assert out == expected
    assert model.training and model.is_gradient_checkpointing


def test_load_weights_points_at_new_model(tiny_random_model, tiny_tokenizer) -> None:
    logits = torch.zeros(1, len(tiny_tokenizer))
    logits[0, EOS] = 5.0  # greedy answer: EOS at once
    engine = engine_for(tiny_random_model, tiny_tokenizer)
    engine.load_weights(controlled_model(tiny_random_model, logits, {}))
    assert engine.generate([[1]], SamplingConfig(max_new_tokens=4, temperature=0.0)) == [
        [Completion([EOS], False)]
    ]


def test_special_token_ids_fallbacks(tiny_random_model, tiny_tokenizer) -> None:
    assert special_token_ids(tiny_random_model, tiny_tokenizer) == (EOS, PAD)
    no_pad = copy.deepcopy(tiny_tokenizer)
    no_pad.pad_token = None
    model = copy.deepcopy(tiny_random_model)
    model.generation_config.pad_token_id = None
    assert special_token_ids(model, no_pad) == (EOS, EOS)  # pad falls back to EOS
    no_eos = copy.deepcopy(no_pad)
    no_eos.eos_token = None
    model.generation_config.eos_token_id = [EOS, 3]
    assert special_token_ids(model, no_eos) == (EOS, EOS)  # EOS from the generation config (first of a list)
    model.generation_config.eos_token_id = None
    with pytest.raises(ValueError, match="EOS"):
        special_token_ids(model, no_eos)


def test_input_validation(tiny_random_model, tiny_tokenizer) -> None:
    with pytest.raises(RuntimeError, match="setup"):
        HFGenerateEngine().generate([[1]], SamplingConfig())
    with pytest.raises(ValueError, match="batch_size"):
        HFGenerateEngine(batch_size=0)
    engine = engine_for(tiny_random_model, tiny_tokenizer)
    assert engine.generate([], SamplingConfig(n=2)) == []
    with pytest.raises(ValueError, match="sampling.n"):
        engine.generate([[1]], SamplingConfig(n=0))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1, 2], []], SamplingConfig())
    with pytest.raises(ValueError, match="top_p"):
        engine.generate([[1]], SamplingConfig(top_p=0.0))
    with pytest.raises(ValueError, match="temperature"):
        engine.generate([[1]], SamplingConfig(temperature=-1.0))
