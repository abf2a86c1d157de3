"""README's model table: every autoencoder class diffusers exports, and which latentq model serves it.

    python -m latentq.models.table            # print the table (Markdown)
    python -m latentq.models.table --write    # replace it in README.md, between the markers

The rows come from the built-in registry (``BUILTIN_MODELS``: layout, latent shapes, output formats,
encoder) and from diffusers itself (every ``ModelMixin`` class of ``diffusers.models.autoencoders``
that the package exports), so a class added to diffusers shows up as not served until a family
serves it. ``tests/test_model_table.py`` fails when README's copy differs from this output.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .registry import BUILTIN_MODELS, ModelSpec

__all__ = ["BEGIN", "END", "NOT_SERVED", "autoencoder_classes", "render", "replace_in", "table_diffusers_version"]

BEGIN = "<!-- models:begin -->"
END = "<!-- models:end -->"

# Why a class has no latentq model. A class missing here and from the registry reads "no family yet".
NOT_SERVED: dict[str, str] = {
    "AsymmetricAutoencoderKL": "its decoder also takes the masked image and the mask (inpainting): more than latents",
    "AutoencoderKLHunyuanImageRefiner": "the HunyuanImage 2.1 refiner's 5-D VAE: no family yet",
    "ConsistencyDecoderVAE": "decodes by sampling a diffusion UNet (a generator per request): no family yet",
    "MMAudioVocoder": "a vocoder (mel spectrogram to waveform), not a latent decoder",
    "MiniMaxMusic3Vocoder": "a vocoder (mel spectrogram to waveform), not a latent decoder",
    "RFD4ProteinaAutoencoder": "protein structures, not images, video or audio",
}


def autoencoder_classes() -> list[str]:
    """The autoencoder (and decoder) model classes diffusers exports at its top level, sorted."""
    import diffusers
    from diffusers.models import ModelMixin, autoencoders

    names = []
    for name in dir(autoencoders):
        cls = getattr(autoencoders, name, None)
        if isinstance(cls, type) and issubclass(cls, ModelMixin) and getattr(diffusers, name, None) is cls:
            names.append(name)
    return sorted(names)


def _shape(shape: list) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _row(cls: str, spec: ModelSpec) -> str:
    family = spec.family_impl
    tokens = spec.layout in ("packed", "flux2")  # token sequences: the image size comes with them
    latents = " or ".join(_shape(shape) + (" + height, width" if tokens and len(shape) == 3 else "")
                          for shape in family.describe_shapes(spec))  # fmt: skip
    outputs = ", ".join(spec.output_formats)
    encoder = "yes" if family.has_encoder(spec) else "no"
    notes = spec.description + (f"; preview `{spec.preview}`" if spec.preview else "")
    return f"| `{cls}` | `{spec.name}` | {spec.layout} | {latents} | {outputs} | {encoder} | {notes} |"


def render(classes: list[str] | None = None, models: dict[str, ModelSpec] | None = None) -> str:
    """The Markdown table (no markers), one row per (class, model), one per class no model serves."""
    classes = autoencoder_classes() if classes is None else classes
    models = BUILTIN_MODELS if models is None else models
    by_class: dict[str, list[ModelSpec]] = {}
    for spec in sorted(models.values(), key=lambda s: s.name):
        by_class.setdefault(spec.diffusers_class or "TAEF2 (latentq's own module)", []).append(spec)
    lines = ["| diffusers class | latentq model | layout | latents | outputs | encoder | notes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for cls in classes:
        specs = by_class.pop(cls, [])
        if specs:
            lines.extend(_row(cls, spec) for spec in specs)
        else:
            lines.append(f"| `{cls}` | not served | | | | | {NOT_SERVED.get(cls, 'no family yet')} |")
    for cls, specs in sorted(by_class.items()):  # classes outside diffusers' list (TAEF2)
        lines.extend(_row(cls, spec) for spec in specs)
    served = sum(1 for cls in classes if any(line.startswith(f"| `{cls}` | `") for line in lines))
    lines.append("")
    lines.append(f"{served} of the {len(classes)} autoencoder classes diffusers {_diffusers_minor()} exports are served.")
    return "\n".join(lines)


def _diffusers_minor() -> str:
    import diffusers

    return ".".join(diffusers.__version__.split(".")[:2])


def table_diffusers_version(text: str) -> str | None:
    """The diffusers minor version (``0.42``) a rendered table in ``text`` was made from; None if it names none."""
    found = re.search(r"autoencoder classes diffusers ([0-9]+\.[0-9]+) exports are served", text)
    return found.group(1) if found else None


def replace_in(text: str, table: str) -> str:
    """``text`` with what lies between the markers replaced by ``table``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN} ... {END} block")
    return text[: start + len(BEGIN)] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentq.models.table", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="README", nargs="?", const="README.md",
                        help="replace the table in this file (default README.md) instead of printing it")  # fmt: skip
    args = parser.parse_args(argv)
    table = render()
    if args.write is None:
        sys.stdout.write(table + "\n")
        return 0
    path = Path(args.write)
    path.write_text(replace_in(path.read_text(), table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
