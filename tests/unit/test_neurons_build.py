"""The index pass against brute force on tiny LLaMA, OPT and GPT-2 models: every statistic equals
the same figure computed from the full [tokens, neurons] activations of the corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.neurons.accumulators import merge_states
from backend.neurons.agreement import overall_top, pearson_from_sums
from backend.neurons.build import DENSE, IndexInputs, accumulate
from backend.neurons.corpus import KEY_EMPTY, POSITION_BITS
from backend.neurons.request import HISTOGRAM_BINS, HISTOGRAM_INNER_EDGES, IndexRequest
from backend.neurons.topk import first_ranked, ranked_order
from tests.conftest import tiny_loaded
from tests.unit.neurons_helpers import distinct_corpus, full_activations, pruned_copy

K, CONTEXT = 4, 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP's spinning on a busy machine (seconds per test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=("llama", "opt", "gpt2"))
def built(request, tmp_path_factory, one_thread):
    tmp_path = tmp_path_factory.mktemp("corpus")
    dense = tiny_loaded(request.param)
    variant = pruned_copy(dense)
    index_request = IndexRequest(
        corpus=distinct_corpus(tmp_path / "corpus.txt"), tokens=1000, top_k=K, context=CONTEXT, batch_tokens=96
    )
    inputs = IndexInputs.prepare(index_request, dense)
    numbers = range(len(inputs.corpus.documents))
    state = accumulate(dense, {"v": variant}, inputs, numbers)
    dense_full = full_activations(dense, inputs.corpus.documents)
    variant_full = full_activations(variant, inputs.corpus.documents)
    return dense, variant, inputs, state, dense_full, variant_full


def _brute_top(column: np.ndarray, keys: np.ndarray, k: int, sign: int) -> tuple[np.ndarray, np.ndarray]:
    scores = sign * column
    order = np.lexsort((keys, -scores))  # score desc, key asc
    order = [i for i in order if scores[i] > 0][:k]
    return keys[order], scores[order]


def test_statistics_equal_full_tensors(built):
    _dense, _variant, inputs, state, (dense_layers, _, where), (variant_layers, _, _) = built
    assert state.tokens == sum(len(ids) - 1 for ids in inputs.corpus.documents) == len(where)
    for model, layers in ((DENSE, dense_layers), ("v", variant_layers)):
        for layer, full in layers.items():  # full: [tokens, neurons]
            stats = state.layers[model][layer]
            f64 = full.double()
            torch.testing.assert_close(stats.sum, f64.sum(0), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(stats.sum_sq, (f64 * f64).sum(0), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(stats.sum_abs, f64.abs().sum(0), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(stats.max, full.amax(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stats.min, full.amin(0), rtol=1e-5, atol=1e-6)
            bins = np.searchsorted(HISTOGRAM_INNER_EDGES, full.abs().numpy(), side="right")  # [tokens, N]
            expected = np.stack([np.bincount(bins[:, n], minlength=HISTOGRAM_BINS) for n in range(full.shape[1])])
            assert np.array_equal(stats.histogram.numpy(), expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_histogram_counts_equal_numpy_on_large_batches(threads):
    """The threaded path (row slices counted side by side, above 64k values) gives numpy's counts,
    under-/overflow and exact edges included, whatever the thread count."""
    from backend.neurons.request import histogram_counts

    generator = torch.Generator().manual_seed(threads)
    magnitudes = (torch.randn(30011, 5, generator=generator) * 4.0).abs() ** 3  # 1e-9 .. >128
    magnitudes[:41, 0] = torch.from_numpy(HISTOGRAM_INNER_EDGES)  # every edge exactly
    magnitudes[41:50, 1] = 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        counts = histogram_counts(magnitudes)
    finally:
        torch.set_num_threads(previous)
    bins = np.searchsorted(HISTOGRAM_INNER_EDGES, magnitudes.numpy(), side="right")
    expected = np.stack([np.bincount(bins[:, n], minlength=HISTOGRAM_BINS) for n in range(5)])
    assert np.array_equal(counts.numpy(), expected)


def test_pearson_equals_numpy(built):
    _, _, _, state, (dense_layers, _, _), (variant_layers, _, _) = built
    for layer in dense_layers:
        d, v = dense_layers[layer].double().numpy(), variant_layers[layer].double().numpy()
        expected = np.array([np.corrcoef(d[:, n], v[:, n])[0, 1] for n in range(d.shape[1])])
        got = pearson_from_sums(
            state.tokens,
            state.layers[DENSE][layer].sum.numpy(),
            state.layers["v"][layer].sum.numpy(),
            state.layers[DENSE][layer].sum_sq.numpy(),
            state.layers["v"][layer].sum_sq.numpy(),
            state.cross["v"][layer].numpy(),
        )
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_top_k_equals_brute_force_with_windows_and_reread(built):
    _, _, inputs, state, (dense_layers, _, where), (variant_layers, _, _) = built
    keys = np.array([(doc << POSITION_BITS) | pos for doc, pos in where], dtype=np.int64)
    row_of = {key: row for row, key in enumerate(keys)}
    for model, layers in ((DENSE, dense_layers), ("v", variant_layers)):
        for layer, full in layers.items():
            for side, sign in (("positive", 1), ("negative", -1)):
                top = overall_top(state.layers[model][layer], side)
                for neuron in range(full.shape[1]):
                    expected_keys, expected_scores = _brute_top(full[:, neuron].numpy(), keys, K, sign)
                    got_keys = top.keys[neuron].numpy()
                    filled = got_keys != KEY_EMPTY
                    assert np.array_equal(got_keys[filled], expected_keys), (model, layer, side, neuron)
                    np.testing.assert_allclose(
                        top.scores[neuron].numpy()[filled], expected_scores, rtol=1e-5, atol=1e-6
                    )
                    for rank, key in enumerate(expected_keys):  # windows: activations around the example
                        row = row_of[int(key)]
                        document, position = where[row]
                        length = len(inputs.corpus.documents[document])
                        for offset in range(-CONTEXT, CONTEXT + 1):
                            value = top.payload["window"][neuron, rank, offset + CONTEXT].item()
                            inside = 1 <= position + offset < length
                            if not inside:
                                assert np.isnan(value)
                                continue
                            assert value == pytest.approx(full[row + offset, neuron].item(), rel=1e-5, abs=1e-6)
                            if model == DENSE:  # re-read under the variant at the same positions
                                reread = top.payload["reread:v"][neuron, rank, offset + CONTEXT].item()
                                expected = variant_layers[layer][row + offset, neuron].item()
                                assert reread == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_start_token_never_counted(built):
    _, _, inputs, state, _, _ = built
    for model in state.layers.values():
        for stats in model:
            assert int(stats.histogram[0].sum()) == state.tokens
            for top in stats.top.values():
                keys = top.keys[top.keys != KEY_EMPTY]
                assert ((keys & ((1 << POSITION_BITS) - 1)) >= 1).all()
    assert int(state.profile_counts.sum()) <= state.tokens
    assert state.documents == set(range(len(inputs.corpus.documents)))


def test_token_kl_equals_kl_div(built):
    _, _, _, state, (_, dense_logits, where), (_, variant_logits, _) = built
    expected = F.kl_div(
        F.log_softmax(variant_logits, -1), F.log_softmax(dense_logits, -1), log_target=True, reduction="none"
    ).sum(-1)  # [tokens]
    kl = state.kl["v"]
    assert float(kl.sum) / state.tokens == pytest.approx(expected.double().mean().item(), rel=1e-4)
    keys = np.array([(doc << POSITION_BITS) | pos for doc, pos in where])
    order = np.lexsort((keys, -expected.numpy()))[: kl.top.k]
    assert np.array_equal(kl.top.keys[0].numpy(), keys[order])
    np.testing.assert_allclose(kl.top.scores[0].numpy(), expected.numpy()[order], rtol=1e-4)


TIE = 1e-5  # scores this close may swap: another batch shape changes the forward's last bits


def _assert_top_equal(a, b):
    """Equal top-k lists, up to the order of scores tied within TIE (compared in key order).

    A batch of other shape rounds the activations differently in the last bits; on some CPUs a
    tiny model gives many activations equal to ~1e-7, whose order (and, in the last tied group
    of a row, whose members) then follows the rounding. Everything above that group is exact."""
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    finite = torch.nan_to_num(a.scores, neginf=-1e30)  # [rows, k], descending per row
    new_group = torch.ones_like(finite, dtype=torch.bool)
    new_group[:, 1:] = (finite[:, :-1] - finite[:, 1:]) > TIE
    group = new_group.long().cumsum(1)  # [rows, k]: tied runs share a number
    last = group == group[:, -1:]  # the run at position k: its members may differ
    order_a, order_b = _by_group_then_key(group, a.keys), _by_group_then_key(group, b.keys)
    assert torch.equal(_reordered(a.keys, order_a)[~last], _reordered(b.keys, order_b)[~last])
    for name, payload in a.payload.items():
        torch.testing.assert_close(_reordered(payload, order_a)[~last],
                                   _reordered(b.payload[name], order_b)[~last], rtol=1e-5, atol=1e-6, equal_nan=True)


def _by_group_then_key(group: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Per row, positions sorted by (tied group, key): a canonical order of tied entries."""
    by_key = keys.argsort(dim=1, stable=True)
    return by_key.gather(1, group.gather(1, by_key).argsort(dim=1, stable=True))


def _reordered(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """values [rows, k, ...] with each row's entries in ``order`` [rows, k]."""
    return values.gather(1, order.view(*order.shape, *([1] * (values.dim() - 2))).expand_as(values))


def _assert_states_equal(a, b):
    assert a.tokens == b.tokens and a.documents == b.documents
    assert torch.equal(a.profile_counts, b.profile_counts)
    for model in a.layers:
        for left, right in zip(a.layers[model], b.layers[model], strict=True):
            for name in ("sum", "sum_sq", "sum_abs", "max", "min", "profile"):
                torch.testing.assert_close(getattr(left, name), getattr(right, name), rtol=1e-5, atol=1e-5)
            assert torch.equal(left.histogram, right.histogram)
            for key, top in left.top.items():
                _assert_top_equal(top, right.top[key])
    for variant in a.kl:
        torch.testing.assert_close(a.kl[variant].sum, b.kl[variant].sum, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.kl[variant].top.keys, b.kl[variant].top.keys)
        assert torch.equal(a.kl[variant].token_count, b.kl[variant].token_count)
        for left, right in zip(a.cross[variant], b.cross[variant], strict=True):
            torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)


def test_result_does_not_depend_on_batch_tokens_or_shard_order(built):
    dense, variant, inputs, state, _, _ = built
    bigger = IndexInputs(**{**inputs.__dict__, "request": inputs.request.model_copy(update={"batch_tokens": 700})})
    _assert_states_equal(state, accumulate(dense, {"v": variant}, bigger, range(len(inputs.corpus.documents))))
    count = len(inputs.corpus.documents)
    first = accumulate(dense, {"v": variant}, inputs, range(count // 3))
    second = accumulate(dense, {"v": variant}, inputs, range(count // 3, count))
    _assert_states_equal(state, merge_states([first, second]))
    _assert_states_equal(state, merge_states([second, first]))
    with pytest.raises(ValueError, match="disjoint"):
        first.merge(first)


def test_first_ranked_equals_the_full_ranking_with_ties():
    generator = torch.Generator().manual_seed(0)
    # few distinct values: many ties between positive scores, some entries empty (-inf) or <= 0
    scores = torch.randint(-2, 6, (500, 40), generator=generator).float()
    scores[scores < -1] = float("-inf")
    keys = torch.randperm(500 * 40, generator=generator).view(500, 40)
    keys[scores == float("-inf")] = KEY_EMPTY
    for k in (1, 7, 20, 40):
        fast, full = first_ranked(scores, keys, k), ranked_order(scores, keys)[:, :k]
        assert torch.equal(scores.gather(1, fast), scores.gather(1, full))
        positive = scores.gather(1, full) > 0  # the order of entries <= 0 is free (they are empties)
        assert torch.equal(keys.gather(1, fast)[positive], keys.gather(1, full)[positive])
    scores[scores > 0] += torch.rand(scores.shape, generator=generator)[scores > 0]  # almost no ties
    assert torch.equal(keys.gather(1, first_ranked(scores, keys, 20))[scores.topk(20, 1).values > 0],
                       keys.gather(1, ranked_order(scores, keys)[:, :20])[scores.topk(20, 1).values > 0])


def test_fused_pass_and_torch_reductions_build_the_same_state(built, monkeypatch):
    """The one-pass reduction (numba, CPU, float32) and the torch reductions it replaces give the
    same state: counts, extremes and top-k exactly, sums to rounding (and both the brute force,
    above: the fixture's state comes from the fused pass wherever numba is installed)."""
    from backend.neurons import fused

    dense, variant, inputs, state, _, _ = built
    calls = []
    real = fused.observe_columns
    monkeypatch.setattr(fused, "observe_columns", lambda *args: calls.append(1) or real(*args))
    documents = range(len(inputs.corpus.documents))
    with_fused = accumulate(dense, {"v": variant}, inputs, documents)
    assert calls, "the fused pass ran"
    _assert_states_equal(state, with_fused)
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    calls.clear()
    _assert_states_equal(state, accumulate(dense, {"v": variant}, inputs, documents))
    assert not calls
