"""Add a dataset: local JSONL files in your own columns, no code beyond the config.

Run from the repository root: HF_HUB_OFFLINE=1 python docs/examples/add_dataset.py
The same keys go under data.init_args in YAML (class_path: echorl_lightning.data.hub.HubPromptDataModule).
"""

import json
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from echorl_lightning.data.hub import HubEvalOptions, HubPromptDataModule, HubSplit
from echorl_lightning.tiny import TINY_MODEL_PATH

folder = Path(tempfile.mkdtemp())
files = {  # invented problems, schema {"question": ..., "solution": "... \\boxed{answer}"}
    "train.jsonl": [
        {"question": "Ana has 3 kites and buys 4 more. How many kites?", "solution": "3+4=7, \\boxed{7}"},
        {"question": "What is 6 times 7?", "solution": "6*7 = \\boxed{42}"},
    ],
    "val.jsonl": [
        {"question": "A box holds 9 pens; 2 are red. How many are not red?", "solution": "\\boxed{7}"}
    ],
}
for name, rows in files.items():
    (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))

data = HubPromptDataModule(
    path=str(folder / "train.jsonl"),
    prompt_column="question",
    answer_column="solution",
    answer_format="boxed",  # the reference is the last \boxed{} of the solution
    instruction="Q: {prompt}\nPut the answer in \\boxed{}.",
    use_chat_template=False,  # True: wrap the instruction in the tokenizer's chat template
    eval=HubEvalOptions(val=HubSplit(split="val", path=str(folder / "val.jsonl")), max_samples=100),
)
data.connect(AutoTokenizer.from_pretrained(TINY_MODEL_PATH))  # the policy's tokenizer
print(data.check_data(max_prompt_tokens=256))  # loads every set now; drops prompts over 256 tokens
for example in data.train_prompts + data.eval_sets()[0].prompts:
    print(repr(example.prompt), "->", example.reference)
