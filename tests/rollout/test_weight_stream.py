"""Weight streaming to the vLLM engine: engine dtype, tied embeddings once, no copies, FSDP2 gathers.

The FSDP2 test shards a tied-embedding tiny Qwen2 over 2 CPU processes (gloo) and checks every streamed
tensor is the full, unsharded parameter in bf16, exactly.
"""

from __future__ import annotations

import gc
import os
import socket
import weakref

import pytest
import torch
import torch.distributed as dist
from transformers import Qwen2Config, Qwen2ForCausalLM

from echorl_lightning.rollout.weight_stream import full_weight, streamed_weights, vllm_weight_name

TIED_KEY = "lm_head.weight"


def tied_model(seed: int = 0) -> Qwen2ForCausalLM:
    """Random tiny Qwen2 (vocab 258, hidden 32, 2 layers) whose output head is its input embedding."""
    config = Qwen2Config(
        vocab_size=258,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config).eval()


def test_weight_names() -> None:
    assert vllm_weight_name("_orig_mod.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight") == (
        "model.layers.0.mlp.up_proj.weight"
    )
    assert vllm_weight_name("model.norm.weight") == "model.norm.weight"


def test_stream_casts_and_yields_tied_embeddings_once() -> None:
    model = tied_model()
    state = model.state_dict()
    assert state[TIED_KEY].data_ptr() == state["model.embed_tokens.weight"].data_ptr()  # really tied
    items = list(streamed_weights(model, torch.bfloat16))
    assert [name for name, _ in items] == [key for key in state if key != TIED_KEY]
    for name, tensor in items:
        assert tensor.dtype == torch.bfloat16 and not tensor.requires_grad
        assert torch.equal(tensor, state[name].bfloat16())
    # every_name (an engine built untied): the tied head also under its own name, same values
    every = dict(streamed_weights(model, torch.bfloat16, every_name=True))
    assert list(every) == list(state) and torch.equal(every[TIED_KEY], every["model.embed_tokens.weight"])


def test_stream_without_cast_copies_nothing_and_strips_wrappers(tiny_random_model) -> None:
    state = tiny_random_model.state_dict()  # untied: lm_head.weight is its own tensor
    items = list(streamed_weights(tiny_random_model, torch.float32))
    assert [name for name, _ in items] == list(state)
    assert all(tensor.data_ptr() == state[name].data_ptr() for name, tensor in items)
    wrapped = torch.nn.Module()  # how torch.compile's OptimizedModule nests the model: keys "_orig_mod.*"
    wrapped._orig_mod = tiny_random_model
    assert next(iter(wrapped.state_dict())).startswith("_orig_mod.")
    assert [name for name, _ in streamed_weights(wrapped, torch.float32)] == list(state)


def test_stream_is_lazy_and_keeps_no_reference() -> None:
    model = tied_model()
    stream = streamed_weights(model, torch.bfloat16)
    _, first = next(stream)
    alive = weakref.ref(first)
    del first
    name, second = next(stream)  # the generator dropped the first cast tensor when it moved on
    gc.collect()
    assert (
        alive() is None
        and name == "model.layers.0.self_attn.q_proj.weight"
        and second.dtype == torch.bfloat16
    )


def test_full_weight_keeps_integer_tensors() -> None:
    steps = torch.tensor([3, 4], dtype=torch.int64)
    assert full_weight(steps, torch.bfloat16).dtype == torch.int64


def _fsdp2_worker(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        model = tied_model()
        reference = {key: value.bfloat16().clone() for key, value in model.state_dict().items()}
        mesh = init_device_mesh("cpu", (world_size,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        embed = model.model.embed_tokens.weight
        assert isinstance(embed, DTensor) and embed.to_local().shape == (129, 32)  # 258 rows / 2 ranks
        items = list(streamed_weights(model, torch.bfloat16))
        assert [name for name, _ in items] == [key for key in reference if key != TIED_KEY]
        for name, tensor in items:
            assert not isinstance(tensor, DTensor), name
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, reference[name]), name
        with pytest.raises(ValueError, match="DDP wrapper"):
            list(streamed_weights(torch.nn.parallel.DistributedDataParallel(tied_model()), torch.bfloat16))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch + transformers: ~50 s on 2 busy cores
def test_stream_gathers_fsdp2_shards_on_two_processes() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.multiprocessing.spawn(_fsdp2_worker, args=(2, port), nprocs=2, join=True)
