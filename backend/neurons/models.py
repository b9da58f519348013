"""The models of an index build: the dense base and one separate copy per variant, checked first."""

from __future__ import annotations

from backend.config import get_settings
from backend.errors import UserError
from backend.models.loader import LoadedModel, load_model, parse_model_ref
from backend.neurons.request import IndexRequest
from backend.pruning.variants import load_variant, read_manifest


def model_name(request: IndexRequest) -> str:
    """The canonical name of the request's base model (the default model when none is given)."""
    return parse_model_ref(request.model or get_settings().default_model).name


def check_variants(request: IndexRequest) -> list[str]:
    """The request's variant ids, each an existing variant of its model (UserError otherwise)."""
    name = model_name(request)
    if len(set(request.variants)) != len(request.variants):
        raise UserError("a variant is listed twice")
    for variant_id in request.variants:
        base = read_manifest(variant_id).get("base_model")
        if base != name:
            raise UserError(f"variant {variant_id!r} was pruned from {base!r}, not {name!r}")
    return list(request.variants)


def load_index_models(request: IndexRequest) -> tuple[LoadedModel, dict[str, LoadedModel]]:
    """The dense model and a copy of it per variant with the variant's overlay applied."""
    variant_ids = check_variants(request)
    dense = load_model(model_name(request))
    variants = {vid: load_variant(dense.name, vid) for vid in variant_ids}
    return dense, variants
