"""The embedded SmolLM2 pruned at 50% with general-text calibration: the perplexity ordering
the papers report (dense < SparseGPT, Wanda < magnitude), printed as a table."""

from __future__ import annotations

import pytest

from backend.evaluation.perplexity import perplexity
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import variant_applied

pytestmark = pytest.mark.integration


def test_perplexity_ordering_at_half_sparsity(embedded, isolated_cache):
    # Calibration from IMDB reviews, perplexity on LAMBADA passages: both offline, different texts.
    half = SparsitySpec.unstructured(0.5)
    variants = {
        method: create_variant(embedded, PruneConfig(method=method, calibration="imdb", spec=half,
                                                     nsamples=16, seqlen=256, seed=0))
        for method in ("magnitude", "wanda", "sparsegpt")
    }
    for result in variants.values():
        assert result.manifest["achieved_sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)

    def ppl() -> float:
        return perplexity(embedded, "lambada", seqlen=256, max_windows=8)["perplexity"]

    table = {"dense": ppl()}
    for method, result in variants.items():
        with variant_applied(embedded, result.variant_id):
            table[method] = ppl()
    table["dense (restored)"] = ppl()

    print("\nperplexity on LAMBADA (8 x 256 tokens), 50% unstructured, IMDB calibration 16 x 256")
    print("| model | perplexity |\n|---|---|")
    for name, value in table.items():
        print(f"| {name} | {value:.2f} |")

    assert table["dense (restored)"] == pytest.approx(table["dense"], rel=1e-6)
    assert table["dense"] < table["sparsegpt"] < table["magnitude"]
    assert table["dense"] < table["wanda"] < table["magnitude"]
