"""The checked-in catalog is complete, valid, and exactly what `make recipes` generates now."""

from __future__ import annotations

from pathlib import Path

from recipes.catalog import CATALOG_DIR, FLEETS, MODELS, WORKLOADS, generate
from recipes.recipe import FILES
from recipes.search import Profile
from recipes.validate import validate_folder


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_catalog_has_every_model_gpu_workload_profile():
    expected = {f"{m}/{g}/{w.tag}_{p.value}" for m in MODELS for g in FLEETS for w in WORKLOADS for p in Profile}
    found = {str(p.parent.relative_to(CATALOG_DIR)) for p in CATALOG_DIR.rglob("recipe.yaml")}
    assert len(expected) == 72 and found == expected
    for folder in expected:
        assert sorted(p.name for p in (CATALOG_DIR / folder).iterdir()) == sorted(FILES)


def test_catalog_is_fresh(tmp_path):
    generate(tmp_path)
    fresh, checked_in = _files(tmp_path), _files(CATALOG_DIR)
    stale = sorted(k for k in fresh.keys() | checked_in.keys() if fresh.get(k) != checked_in.get(k))
    assert not stale, f"recipes/catalog is stale ({len(stale)} files, e.g. {stale[:3]}): run `make recipes`"


def test_checked_in_recipes_validate():
    for recipe in CATALOG_DIR.rglob("recipe.yaml"):
        validate_folder(recipe.parent)
