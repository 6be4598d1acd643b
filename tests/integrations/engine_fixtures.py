"""A tiny GPT-2, tokenizer and addition dataset made in code (no hub download), for the engine adapter tests."""
from __future__ import annotations

import numpy as np
import torch

from minirlvr.tokenizer import VOCAB
from toy_tasks import get_task

N_PROMPTS, GROUP, NEW_TOKENS = 4, 4, 8


def tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    out.padding_side = "left"
    return out


def model(seed: int = 0, save_dir=None):
    """A fresh 2-layer GPT-2 over minirlvr's vocabulary. With save_dir it is also saved there and its config
    points at it, so that TRL can build a reference model from it (beta > 0) without the hub."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    out = GPT2LMHeadModel(GPT2Config(vocab_size=len(VOCAB), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0))
    if save_dir is not None:
        out.save_pretrained(save_dir)
        out.config._name_or_path = str(save_dir)
    return out


def dataset_and_reward(n: int = 64):
    from datasets import Dataset
    task = get_task("addition")
    problems = task.sample(n, np.random.default_rng(0), split="train")
    by_prompt = {p.prompt: p for p in problems}
    data = Dataset.from_list([{"prompt": p.prompt} for p in problems])

    def reward(prompts, completions, **kw):  # any string is a valid completion: the task's checker decides
        return [task.reward(by_prompt[p], c) for p, c in zip(prompts, completions)]

    return data, reward


def grpo_config(tmp, **overrides):
    from trl import GRPOConfig
    settings = dict(output_dir=str(tmp), per_device_train_batch_size=N_PROMPTS * GROUP, num_generations=GROUP,
                    max_completion_length=NEW_TOKENS, temperature=1.0, learning_rate=1e-3, beta=0.0, loss_type="grpo",
                    epsilon=0.2, num_iterations=1, steps_per_generation=1, max_steps=3, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
                    report_to=[], use_cpu=True, bf16=False, disable_dropout=True, seed=0, dataloader_num_workers=0,
                    shuffle_dataset=False)
    settings.update(overrides)
    return GRPOConfig(**settings)
