"""Code shared by the test files (test files import it from here, never from each other).

- :mod:`.paths`: the repository root.
- :mod:`.cli_runs`: ``cli.py`` runs in a subprocess, the demo config at tiny sizes, the logged scalars.
- :mod:`.tiny_models`: the tiny tokenizer and random-init Qwen2 behind ``tests/conftest.py``'s fixtures.
- :mod:`.tiny_fit`: real fits of the embedded tiny model on CPU.
- :mod:`.multiproc_worker`: the fixed rollout buffer and the spawn target of the multi-process tests.
- :mod:`.group_probe`: a callback that records which prompts each rank trains on.
- :mod:`.checkpoints`: a booby-trapped pickle.
- :mod:`.logprobs`: response log-probs of a policy on a fixed batch.
- :mod:`.input_files`: the valid inputs of the input fuzz tables.
"""
