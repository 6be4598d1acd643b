"""Hypothesis profiles. "ci" (the default) keeps the whole suite fast on 2 CPU cores;
"dev" digs deeper: HYPOTHESIS_PROFILE=dev python -m pytest tests/"""
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # toy_tasks, minirlvr

settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=400,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The test models are tiny: intra-op threads only add overhead (on a 2-core CI box, OpenMP
# spin-waiting made one forward pass ~500x slower). MINIRLVR_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("MINIRLVR_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny random GPT checkpoint, so trainer and CLI tests run in seconds."""
    import torch
    from minirlvr.model import GPT, GPTConfig, save_checkpoint
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(str(path), GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2)))
    return str(path)
