"""Models: the registry (one builder per model, each with its preprocessing and metadata) and the builders.

Importing any part of the package registers every model, so ``get_spec`` and ``build_model`` know them all.
"""
from .builders import DEFAULT_TRANSFER_MODEL, familiarity_network
from .registry import (LandmarkNet, ModelSpec, Preprocessing, build_model, count_parameters, get_spec, list_models,
                       model_info, register)

__all__ = ["DEFAULT_TRANSFER_MODEL", "LandmarkNet", "ModelSpec", "Preprocessing", "build_model", "count_parameters",
           "familiarity_network", "get_spec", "list_models", "model_info", "register"]
