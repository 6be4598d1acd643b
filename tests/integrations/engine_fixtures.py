"""A tiny GPT-2, tokenizer and addition dataset made in code (no hub download), for the engine adapter tests."""
from __future__ import annotations

import numpy as np

from minirlvr.integrations.hf import toy_gpt2, toy_tokenizer
from toy_tasks import get_task

N_PROMPTS, GROUP, NEW_TOKENS = 4, 4, 8


def tokenizer():
    return toy_tokenizer()


def model(seed: int = 0, save_dir=None):
    return toy_gpt2(seed, save_dir=save_dir)


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
