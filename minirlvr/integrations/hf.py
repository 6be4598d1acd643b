"""The toy world in Hugging Face form, made in code (no hub download): a tokenizer over minirlvr's character
vocabulary and a small GPT-2 over it. For trying an engine adapter on the toy tasks, the adapter tests,
tutorial 01 and the TRL benchmark. Needs `transformers` (the `integrations` or `bench` extra)."""
from __future__ import annotations

import torch

from ..tokenizer import BOS, EOS, PAD, VOCAB


def toy_tokenizer():
    """PreTrainedTokenizerFast: one token per character of VOCAB (same ids as minirlvr.tokenizer), left padding."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token=VOCAB[PAD]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=VOCAB[PAD], bos_token=VOCAB[BOS],
                                  eos_token=VOCAB[EOS])
    out.padding_side = "left"
    return out


def toy_gpt2(seed: int = 0, n_embd: int = 32, n_layer: int = 2, n_head: int = 2, n_positions: int = 64,
             save_dir=None):
    """A freshly initialised GPT2LMHeadModel over VOCAB (torch seeded with `seed`). With save_dir it is also
    saved there and its config points at it, so that TRL can build a reference model from it (beta > 0)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(VOCAB), n_positions=n_positions, n_embd=n_embd,
                                       n_layer=n_layer, n_head=n_head, bos_token_id=BOS, eos_token_id=EOS,
                                       pad_token_id=PAD))
    if save_dir is not None:
        model.save_pretrained(save_dir)
        model.config._name_or_path = str(save_dir)
    return model
