"""The catalogue of known base models (catalog.yaml): size, shape, context, licence, training data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tunesmith.models.memory import ModelShape, shape_from_config

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")


@dataclass
class CatalogEntry:
    id: str
    params: float
    architecture: str
    license: str
    languages: list[str]
    training_data: str
    chat_template: bool
    offers: list[str]  # causal_lm, chat, base, classification (catalog.yaml's header)
    context: int = 0
    shape: ModelShape | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "params": self.params,
            "architecture": self.architecture,
            "context": self.context,
            "license": self.license,
            "languages": self.languages,
            "training_data": self.training_data,
            "chat_template": self.chat_template,
        }


def _entry(item: dict[str, Any]) -> CatalogEntry:
    shape, context, params = None, int(item.get("context", 0)), float(item["params"])
    if item["id"] == "embedded":
        from tunesmith.models.load import EMBEDDED_MODEL_DIR

        config_file = EMBEDDED_MODEL_DIR / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            shape = shape_from_config(config)
            context = int(config.get("max_position_embeddings", 0))
            params = float(shape.num_parameters)
    else:
        heads = item["heads"]
        shape = ModelShape(
            vocab_size=item["vocab"],
            hidden_size=item["hidden"],
            intermediate_size=item["intermediate"],
            num_layers=item["layers"],
            num_heads=heads,
            num_kv_heads=item.get("kv_heads", heads),
            head_dim=item.get("head_dim", item["hidden"] // heads),
            tied_embeddings=bool(item.get("tied", True)),
            gated_mlp=item["architecture"] not in ("gpt2", "bert", "modernbert"),
        )
    return CatalogEntry(
        id=item["id"],
        params=params,
        architecture=item["architecture"],
        license=item["license"],
        languages=list(item.get("languages", [])),
        training_data=item.get("training_data", ""),
        chat_template=bool(item.get("chat_template", False)),
        offers=list(item.get("offers", [])),
        context=context,
        shape=shape,
    )


@lru_cache(maxsize=1)
def load_catalog() -> tuple[CatalogEntry, ...]:
    raw = yaml.safe_load(CATALOG_PATH.read_text(encoding="utf-8"))
    return tuple(_entry(item) for item in raw["models"])


def find(name: str) -> CatalogEntry | None:
    """The entry for a hub id or 'embedded' (case-insensitive), if the catalogue knows it."""
    lowered = name.lower()
    return next((e for e in load_catalog() if e.id.lower() == lowered), None)


def filter_catalog(
    needs: tuple[str, ...] | list[str],
    max_params: float | None = None,
    license: str | None = None,
    min_context: int | None = None,
) -> list[CatalogEntry]:
    """The entries that offer everything in `needs` (a task's catalogue_needs) and pass the filters."""
    return [
        e
        for e in load_catalog()
        if all(need in e.offers for need in needs)
        and (max_params is None or e.params <= max_params)
        and (license is None or e.license.lower() == license.lower())
        and (min_context is None or e.context >= min_context)
    ]


def parse_count(text: str) -> float:
    """'1B', '500M', '1.5e9' -> number of parameters."""
    cleaned = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(cleaned[-1:])
    try:
        return float(cleaned[:-1]) * scale if scale else float(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not a parameter count; write it like 1B, 500M or 1.5e9") from None
