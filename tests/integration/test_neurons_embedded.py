"""The neuron index on the embedded SmolLM2: a real corpus (the offline mix), a magnitude variant,
and an identical copy of the dense model as a control whose agreement must be perfect."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from backend.models.loader import LoadedModel
from backend.neurons.build import IndexInputs, accumulate
from backend.neurons.queries import changed_neurons, divergent_contexts, neuron_page
from backend.neurons.request import IndexRequest
from backend.neurons.writer import write_index
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import load_variant


@pytest.mark.timeout(1800)
def test_index_on_embedded_model(embedded, isolated_cache):
    magnitude = create_variant(embedded, PruneConfig("magnitude", spec=SparsitySpec.parse("0.5"))).variant_id
    variant = load_variant(embedded.name, magnitude, device="cpu", dtype="float32")
    same = LoadedModel(name=embedded.name, model=copy.deepcopy(embedded.model), tokenizer=embedded.tokenizer,
                       adapter=embedded.adapter, source=embedded.source)
    request = IndexRequest(variants=[magnitude], tokens=1000, max_length=128, batch_tokens=1024)
    inputs = IndexInputs.prepare(request, embedded)
    assert inputs.corpus.counted_tokens == 1000
    state = accumulate(embedded, {magnitude: variant, "same": same}, inputs, range(len(inputs.corpus.documents)))
    write_index(state, inputs, embedded.tokenizer, "embedded-index")
    assert float(state.kl["same"].sum) == pytest.approx(0.0, abs=1e-6)
    assert float(state.kl[magnitude].sum) / state.tokens > 0.01

    page = neuron_page("embedded-index", 11, 1229, "same")
    agreement = page["variant"]["agreement"]
    assert agreement["pearson"] == pytest.approx(1.0, abs=1e-6) and agreement["mass_ratio"] == pytest.approx(1.0)
    assert agreement["topk_overlap"] == 1.0 and page["weights_removed"]["fraction"] == 0.0
    assert page["dense"]["stats"]["count"] == 1000
    assert all(example["position"] >= 1 for example in page["dense"]["top_positive"])

    rows = changed_neurons("embedded-index", magnitude, order="pearson", limit=20)
    assert rows[0]["pearson"] < 0.9 and all(0.0 < row["weights_removed"] for row in rows)
    noise = np.mean([row["not_distinguishable"] for row in changed_neurons("embedded-index", "same", limit=5000)])
    assert noise == 1.0  # a copy of the dense model never clears its own floor
    divergence = divergent_contexts("embedded-index", magnitude, limit=5)
    assert len(divergence["top"]) == 5 and divergence["top"][0]["kl"] >= divergence["top"][-1]["kl"]
