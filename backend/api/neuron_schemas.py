"""Response models of the neuron index endpoints: neuron pages, change rankings, divergence, search.

The shapes are those of ``backend.neurons``' query functions (docs/neurons.md); they are declared
here so that /docs describes every field. The index request itself is ``backend.neurons``'
``IndexRequest``, declared once there and reused by the CLI and POST /index/jobs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

INDEX_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Open(BaseModel):
    """Answers may carry more fields than documented here (newer index code): they pass through."""

    model_config = ConfigDict(extra="allow")


class IndexSummary(Open):
    id: str = Field(description="Index id (derived from the request, the models and the code version).")
    model: str = Field(description="The dense model the index was built on.")
    variants: list[str] = Field(description="Variant ids indexed beside the dense model.")
    corpus: str | dict | None = Field(default=None, description="The corpus: a named mix or file, with its size.")
    tokens: int | None = Field(default=None, description="Corpus tokens counted (start tokens excluded).")
    created: str | None = Field(default=None, description="When the index was written (UTC).")
    stale: bool = Field(default=False, description="Built by other code than this server's: shown, but "
                                                   "a new build request computes a fresh index.")


# window activations: float16 in the index, sent as their shortest decimal (backend.neurons.page)
WINDOW_PRECISION = ("Stored as float16 and written as the shortest decimal that reads back as that float16 "
                    "(at most 5 significant digits; within 2^-11 relative, or 2^-25 absolute below 6.1e-5).")


class Example(Open):
    document: int = Field(description="Document number in corpus order.")
    position: int = Field(description="Token position of the example in its document (0 = the first "
                                      "text token after the start token).")
    activation: float = Field(description="The neuron's activation on that token (float32, every digit).")
    tokens: list[str] = Field(description="The context window's tokens (± context tokens).")
    token_ids: list[int] = Field(default_factory=list, description="Their token ids.")
    activations: list[float] = Field(description=f"This model's activation on each window token. {WINDOW_PRECISION}")
    focus: int = Field(description="Index of the example token in `tokens`.")


class RereadExample(Example):
    dense_activation: float = Field(description="The dense model's activation on the example token.")
    variant_activation: float = Field(description="The variant's activation on the same token.")
    dense_activations: list[float] = Field(default_factory=list,
                                           description=f"Dense activations on the window. {WINDOW_PRECISION}")
    variant_activations: list[float] = Field(default_factory=list,
                                             description=f"The variant's activations on the window. {WINDOW_PRECISION}")


class NeuronStats(Open):
    count: int = Field(description="Tokens seen.")
    mean: float = Field(description="Mean activation.")
    mean_abs: float = Field(description="Mean |activation|.")
    std: float = Field(description="Standard deviation of the activation.")
    max: float = Field(description="Largest activation.")
    min: float = Field(description="Smallest activation.")
    density: float = Field(description="Fraction of tokens with |a| above `density_threshold`.")
    density_threshold: float = Field(description="The |a| threshold of `density`.")


class Agreement(Open):
    pearson: float | None = Field(description="Pearson correlation of dense and variant over all tokens.")
    mass_ratio: float | None = Field(description="Σ|a_variant| / Σ|a_dense| over all tokens.")
    mass_lost: float | None = Field(description="1 − mass_ratio.")
    topk_overlap: float | None = Field(description="Share of the dense top-k positions also in the "
                                                    "variant's top-k (positive side).")
    profile_correlation: float | None = Field(description="Token-profile correlation, dense vs variant "
                                                          "across the two corpus halves.")
    profile_correlation_floor: float | None = Field(description="The same, dense vs dense across the halves: "
                                                                "what corpus noise alone gives.")
    token_overlap: float | None = Field(description="Top-k token overlap, dense vs variant across halves.")
    token_overlap_floor: float | None = Field(description="The same, dense vs dense across halves.")
    not_distinguishable: bool = Field(description="True when neither change figure is below its floor: "
                                                  "'not distinguishable from corpus noise'.")


class ModelSide(Open):
    stats: NeuronStats = Field(description="Activation statistics over the corpus.")
    histogram: list[int] = Field(description="Token counts of |a| in the bins of `histogram_edges`.")
    top_positive: list[Example] = Field(description="The top-k positive activations, largest first.")
    top_negative: list[Example] = Field(description="The top-k negative activations, most negative first.")


class VariantSide(ModelSide):
    id: str = Field(description="Variant id.")
    agreement: Agreement = Field(description="Dense-vs-variant figures with their split-half floors.")
    dense_top_reread: list[RereadExample] = Field(description="The dense top examples read under the variant.")


class NeuronPage(Open):
    index: str = Field(description="Index id.")
    model: str = Field(description="Dense model.")
    layer: int = Field(description="Decoder layer.")
    neuron: int = Field(description="Neuron (column of the layer's down projection).")
    tokens: int | None = Field(default=None, description="Corpus tokens.")
    corpus: str | dict | None = Field(default=None, description="The corpus.")
    variants: list[str] = Field(description="Variant ids in the index.")
    histogram_edges: list[float] = Field(description="Bin edges of |a| shared by all models and neurons.")
    dense: ModelSide = Field(description="The dense model.")
    variant: VariantSide | None = Field(description="The chosen variant (null: none asked).")
    weights_removed: dict | None = Field(description="Share of this neuron's weights the variant's mask "
                                                     "removed (down-projection column, gate/up rows).")


class ChangedNeuron(Agreement):
    layer: int = Field(description="Decoder layer.")
    neuron: int = Field(description="Neuron index.")


class DivergentContext(Open):
    document: int = Field(description="Document number.")
    position: int = Field(description="Token position.")
    kl: float = Field(description="KL(p_dense || p_variant) of the next-token distributions at that token (nats).")
    tokens: list[str] = Field(description="The context window.")
    focus: int = Field(description="Index of that token in `tokens`.")


class TokenDivergence(Open):
    token: str = Field(description="A token (its text).")
    mean_kl: float = Field(description="Mean KL at the positions holding this token (nats).")
    count: int = Field(description="Positions holding it.")


class Divergence(Open):
    mean_kl: float = Field(description="Mean KL(p_dense || p_variant) over all corpus tokens (nats).")
    top: list[DivergentContext] = Field(description="The most divergent positions, largest first.")
    tokens: list[TokenDivergence] = Field(description="Tokens ranked by their mean KL.")


class SearchHit(Open):
    layer: int = Field(description="Decoder layer.")
    neuron: int = Field(description="Neuron index.")
    hits: int = Field(description="Top examples whose example token matches.")
    max_activation: float = Field(description="Largest activation among those examples.")


class LogitEffect(BaseModel):
    token: str = Field(description="A vocabulary token.")
    value: float = Field(description="Its logit change per unit of the neuron's activation.")


class LogitEffects(Open):
    promoted: list[LogitEffect] = Field(description="Tokens whose logit the neuron raises most.")
    suppressed: list[LogitEffect] = Field(description="Tokens whose logit it lowers most.")


class NeuronLogits(BaseModel):
    model: str = Field(description="Dense model.")
    layer: int = Field(description="Decoder layer.")
    neuron: int = Field(description="Neuron index.")
    dense: LogitEffects = Field(description="With the dense model's weights.")
    variant: LogitEffects | None = Field(description="With the variant's weights (null: none asked).")
    variant_id: str | None = Field(description="The variant.")


class TextTestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000, description="The text to run the neuron on.")
    variant: str | None = Field(default=None, max_length=128, description="Also under this variant.")


class TextTest(Open):
    tokens: list[str] = Field(description="The text's tokens (the start token first, as an empty string).")
    dense: list[float] = Field(description="The dense model's activation on each token.")
    variant: list[float] | None = Field(description="The variant's (null: none asked).")


class NsaSelection(BaseModel):
    result: str = Field(description="NSA result id (open it in the explorer).")
    created_at: str = Field(description="When it was stored.")
    preview: str = Field(description="Its first text, shortened.")
    n_texts: int = Field(description="Texts attributed.")
    task: str = Field(description="NSA task type.")
    rank: int = Field(description="This neuron's rank among the selected ones (1 = best).")
    score: float = Field(description="Its NSA score.")
    words: list[str] = Field(description="The words it was attributed to.")
    held_out: list[dict] = Field(description="Per variant of the result: the held-out excess drop "
                                             "{variant, mean, low, high, verdict} (empty: none computed).")
