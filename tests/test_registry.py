import pytest
import torch
from conftest import TAEF2_DIR

from latentq.errors import ConfigError, UnknownModel
from latentq.models.loader import load_model
from latentq.models.registry import BUILTIN_MODELS, load_registry

pytestmark = pytest.mark.timeout(60)

TINY_KL = """
[models.tiny-kl]
class = "AutoencoderKL"
scaling_factor = 0.5
config = { in_channels = 3, out_channels = 3, latent_channels = 4, block_out_channels = [8, 16], layers_per_block = 1, norm_num_groups = 4, down_block_types = ["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types = ["UpDecoderBlock2D", "UpDecoderBlock2D"] }
"""


def test_builtins():
    assert BUILTIN_MODELS["taef2"].latent_channels == 32
    assert BUILTIN_MODELS["taef2"].source == "madebyollin/taef2"
    sd15 = BUILTIN_MODELS["sd15"]
    assert (sd15.scaling_factor, sd15.latent_channels, sd15.subfolder) == (0.18215, 4, "vae")
    assert sd15.source == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModel, match="known models: .*flux1, .*sd15.*taef2"):
        load_registry(None).get("sdxl-nope")


def test_models_file_overrides_source_relative_to_the_file(tmp_path):
    (tmp_path / "weights").mkdir()
    path = tmp_path / "models.toml"
    path.write_text('[models.taef2]\nsource = "./weights"\n')
    spec = load_registry(path).get("taef2")
    assert spec.source == str((tmp_path / "weights").resolve())
    assert spec.latent_channels == 32  # the rest stays built-in


def test_models_file_declares_a_diffusers_model(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(TINY_KL)
    spec = load_registry(path).get("tiny-kl")
    assert (spec.loader, spec.diffusers_class, spec.latent_channels, spec.scaling_factor) == (
        "diffusers", "AutoencoderKL", 4, 0.5)  # fmt: skip
    model = load_model(spec)
    out = model.decode(torch.randn(2, 4, 8, 8))
    assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1


def test_env_variable_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "m.toml"
    path.write_text(f'[models.taef2]\nsource = "{TAEF2_DIR}"\n')
    monkeypatch.setenv("LATENTQ_MODELS", str(path))
    assert load_registry().get("taef2").source == str(TAEF2_DIR.resolve())


@pytest.mark.parametrize(
    "text, words",
    [
        ("[models.x]\nclass = 'AutoencoderKL'\nlatent_channels = 4\n", "needs a weights"),
        ("[models.x]\nsource = 'a'\nclass = 'AutoencoderKL'\n", "latent_channels"),
        ("[models.taef2]\ncolour = 'red'\n", "unknown key 'colour'"),
        ("[models.taef2]\nlayout = 'cube'\n", "layout"),
        ("models = [", "cannot read"),
    ],
)
def test_bad_models_files(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_registry(path)
