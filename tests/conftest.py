"""Shared fixtures: tiny random-initialised models of each supported family, a real BPE tokenizer,
an isolated cache directory, and the embedded model (loaded once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
)

from backend.config import Settings, get_settings
from backend.models.adapters import adapter_for
from backend.models.loader import LoadedModel
from backend.process_setup import configure_process

configure_process()  # the test session is a process start, like the CLI's

REPO_ROOT = Path(__file__).resolve().parents[1]
# The embedded model is converted once into the repository's own cache and reused by every run.
SHARED_CACHE = Path(os.environ.get("PRUNELENS_TEST_SHARED_CACHE", REPO_ROOT / "models_cache"))

TINY_CORPUS = [
    "The movie was painfully slow, but the acting was beautiful.",
    "A delightful, warm and funny film that never drags.",
    "Question: what color is the sky? Answer: blue.",
    "If all cats are animals and Tom is a cat, then Tom is an animal.",
    "Pruning removes weights; calibration data decides which ones.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 unicode text, emoji \U0001F600 and numbers 12345.",
]
TINY_VOCAB = 320
FAMILIES = ("llama", "opt", "gpt2")


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE trained on a few sentences: any text encodes, offsets are exact."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    fast.pad_token = fast.eos_token
    return fast


def build_tiny_model(family: str, seed: int = 0, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    vocab = TINY_VOCAB
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    elif family == "opt":
        config = OPTConfig(
            vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=32,
            enable_bias=True, do_layer_norm_before=True, dropout=0.0,
        )
        model = OPTForCausalLM(config)
    elif family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=32, n_inner=64, n_layer=layers, n_head=4, n_positions=256,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(family)
    # Random init gives tiny activations; larger weights make masks and drops non-trivial.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                param.normal_(0.0, 0.2)
    return model.eval()


def tiny_loaded(family: str, seed: int = 0, layers: int = 2) -> LoadedModel:
    model = build_tiny_model(family, seed, layers)
    return LoadedModel(
        name=f"tiny-{family}", model=model, tokenizer=build_tiny_tokenizer(),
        adapter=adapter_for(model), source="local",
    )


@pytest.fixture(params=FAMILIES)
def tiny(request) -> LoadedModel:
    """One tiny random model per supported family (the test runs once per family)."""
    return tiny_loaded(request.param)


@pytest.fixture
def tiny_model_dir(tmp_path) -> callable:
    """Save a tiny model of a family as a local checkpoint directory (safetensors + tokenizer)."""

    def save(family: str = "llama", seed: int = 0) -> Path:
        target = tmp_path / f"tiny-{family}-{seed}"
        loaded = tiny_loaded(family, seed)
        loaded.model.save_pretrained(target, safe_serialization=True)
        loaded.tokenizer.save_pretrained(target)
        return target

    return save


@pytest.fixture
def calibration_file(tmp_path) -> str:
    """A ``file:`` calibration set of the tiny corpus, long enough for a few short windows."""
    path = tmp_path / "calibration.txt"
    path.write_text("\n\n".join(TINY_CORPUS * 6), encoding="utf-8")
    return f"file:{path}"


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Settings:
    """Point PRUNELENS_CACHE_DIR at a fresh folder, but let the embedded checkpoint be shared."""
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    embedded = SHARED_CACHE / "models" / "smollm2-135m-instruct"
    if embedded.is_dir():
        (cache / "models" / "smollm2-135m-instruct").symlink_to(embedded.resolve())
    monkeypatch.setenv("PRUNELENS_CACHE_DIR", str(cache))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    """The real embedded SmolLM2-135M-Instruct (converted into models_cache on first use)."""
    from backend.models.loader import load_model

    settings = Settings(cache_dir=SHARED_CACHE)
    return load_model("smollm2-135m-instruct", device="cpu", dtype="float32", settings=settings)
