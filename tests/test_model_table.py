"""README's model table is the generator's output; GET /v1/models lists every family the same way."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from latentq.models import table
from latentq.models.registry import BUILTIN_MODELS

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_version() -> tuple[int, ...]:
    version = table.table_diffusers_version(README.read_text())
    assert version, "README's model table names no diffusers version"
    return tuple(int(part) for part in version.split("."))


def installed_version() -> tuple[int, ...]:
    import diffusers

    return tuple(int(part) for part in diffusers.__version__.split(".")[:2])


@pytest.mark.timeout(120)
def test_readme_table_is_the_generators_output():
    if installed_version() != readme_version():  # the lowest-versions CI run: an older diffusers lists fewer classes
        pytest.skip(f"README's table is of diffusers {readme_version()}, this is {installed_version()}")
    text = README.read_text()
    assert table.BEGIN in text and table.END in text
    current = text[text.index(table.BEGIN) + len(table.BEGIN) : text.index(table.END)].strip("\n")
    assert current == table.render(), "README's model table is stale: run `python -m latentq.models.table --write`"


@pytest.mark.timeout(120)
def test_every_diffusers_autoencoder_and_every_model_has_a_row():
    classes = table.autoencoder_classes()
    assert {"AutoencoderKL", "AutoencoderTiny", "AutoencoderDC", "AutoencoderKLQwenImage", "VQModel",
            "ConsistencyDecoderVAE", "AutoencoderOobleck"} <= set(classes)  # fmt: skip
    if installed_version() >= readme_version():  # an older diffusers has not added them all yet
        assert set(table.NOT_SERVED) <= set(classes), "a reason for a class diffusers no longer exports"
    rows = table.render().splitlines()
    for cls in classes:
        assert any(row.startswith(f"| `{cls}` |") for row in rows), cls
    for name, spec in BUILTIN_MODELS.items():
        (row,) = [row for row in rows if f"| `{name}` |" in row]
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[2] == spec.layout and cells[4] == ", ".join(spec.output_formats)
        assert cells[5] == ("yes" if spec.offers_encoder else "no")
    served_by_nobody = [cls for cls in classes if not any(s.diffusers_class == cls for s in BUILTIN_MODELS.values())]
    for cls in served_by_nobody:
        assert f"| `{cls}` | not served |" in "\n".join(rows)
    # A class diffusers adds tomorrow shows up as not served, with the default reason.
    assert "| `AutoencoderFuture` | not served | | | | | no family yet |" in table.render(classes + ["AutoencoderFuture"])


@pytest.mark.timeout(300)
def test_models_route_lists_every_family(procs):
    api = procs.api()
    listed = {m["name"]: m for m in httpx.get(f"{api}/v1/models", timeout=30).json()["models"]}
    assert set(BUILTIN_MODELS) <= set(listed)
    for name, spec in BUILTIN_MODELS.items():
        entry = listed[name]
        assert entry["family"] == spec.family_impl.name and entry["layout"] == spec.layout
        assert entry["output_formats"] == spec.output_formats and entry["has_encoder"] == spec.offers_encoder
        assert entry["latent_shapes"][0] == entry["latent_shape"]
    assert listed["flux1"]["latent_shapes"] == [["B", "(H/16)*(W/16)", 64], ["B", 16, "h", "w"]]
    assert listed["flux1"]["has_encoder"] and not listed["flux2"]["has_encoder"]
    assert listed["qwenimage"]["family"] == "qwenimage" and listed["sana"]["class"] == "AutoencoderDC"
    assert listed["kandinsky22"]["class"] == "VQModel" and listed["zimage"]["preview"] == "taef1"
