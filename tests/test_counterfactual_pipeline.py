"""CounterfactualPipeline: a generator folder opens as a diffusers pipeline that edits images given as
PIL images and rows of values, the same edits `cfgen generate` makes; older folders still open."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_folder
from diffusers import DDPMScheduler, DiffusionPipeline
from PIL import Image

from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.table import read_imagefolder
from cfgen.errors import CfgenError
from cfgen.generator.pipeline import CounterfactualPipeline, store_inference
from cfgen.generator.training import train_generator


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {"y": str(y), "color": color, "shape": shape, "split": "train"}
        for y in range(3)
        for color in ("red", "green", "blue")
        for shape in ("a", "b")
    ]
    return write_folder(tmp_path_factory.mktemp("data") / "d", rows)


def _tiny_generator(data: Path, out: Path, prediction_type: str) -> Path:
    return train_generator(data, out, label="y", preset="tiny", steps=4, checkpoint_every=0, mixed_precision="no",
                           prediction_type=prediction_type)  # fmt: skip


@pytest.fixture(scope="module")
def generator(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_generator(data, tmp_path_factory.mktemp("gen") / "gen", "v_prediction")


@pytest.fixture(scope="module")
def noise_generator(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Predicting the noise, as every generator from before the velocity did."""
    return _tiny_generator(data, tmp_path_factory.mktemp("gen") / "gen", "epsilon")


def sources(generator: Path, count: int) -> tuple[list[Image.Image], list[dict[str, str]]]:
    table = read_imagefolder(json.loads((generator / "training_config.json").read_text())["data"])
    rows = [{name: table.columns[name][i] for name in ("y", "color", "shape")} for i in range(count)]
    return [Image.open(path).convert("RGB") for path in table.image_paths[:count]], rows


def test_the_folder_opens_as_a_diffusers_pipeline(generator: Path) -> None:
    index = json.loads((generator / "model_index.json").read_text())
    assert index["_class_name"] == "CounterfactualPipeline"
    assert index["attribute_encoder"] == ["cfgen.generator.conditioning", "AttributeEncoder"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["inverse_scheduler"] == ["diffusers", "DDIMInverseScheduler"]
    ours, generic = CounterfactualPipeline.from_pretrained(generator), DiffusionPipeline.from_pretrained(generator)
    assert type(generic) is CounterfactualPipeline
    assert ours.config.schema["label"]["name"] == "y" and ours.config.image_format == {"size": [8, 8], "mode": "RGB"}
    for name, weight in ours.unet.state_dict().items():
        assert torch.equal(weight, generic.unet.state_dict()[name])
    for pipeline in (ours, generic):  # both directions step the velocity the tiny preset trains
        assert pipeline.scheduler.config.prediction_type == "v_prediction"
        assert pipeline.inverse_scheduler.config.prediction_type == "v_prediction"
    card = (generator / "README.md").read_text()
    assert (
        "| color | attribute | categorical | blue, green, red |" in card
        and "tiny UNet predicting the velocity, 4 steps" in card
    )
    assert "(chosen: none yet)" in card  # not tuned
    assert "guides each without the other): none." in card  # every y with every colour and shape


def test_call_makes_the_edits_cfgen_generate_makes(generator: Path, tmp_path: Path) -> None:
    pipe = CounterfactualPipeline.from_pretrained(generator)
    images, rows = sources(generator, 3)
    out = pipe(images, rows, "color=*", steps=4)
    assert out.sources == [0, 0, 1, 1, 2, 2]
    assert [v["color"] for v in out.values] == [c for r in rows for c in ("blue", "green", "red") if c != r["color"]]
    assert len(out.images) == 6 and all(image.size == (8, 8) and image.mode == "RGB" for image in out.images)

    # a dict intervention, and tensors out: the images `cfgen generate` writes for the same edits
    data = json.loads((generator / "training_config.json").read_text())["data"]
    written = generate_counterfactuals(data, "color=green", tmp_path / "cf", generator=generator, limit=3, steps=4,
                                       mixed_precision="no", progress=False)  # fmt: skip
    written_table = read_imagefolder(written)
    expected = np.stack([np.asarray(Image.open(p), dtype=int) for p in written_table.image_paths])
    table = read_imagefolder(data)
    edited = pipe(images, rows, {"color": "green"}, steps=4, output_type="np").images
    assert np.abs(np.round(edited * 255).astype(int) - expected).max() <= 1  # the same up to uint8 rounding

    same = pipe(images, table.select(np.arange(3)), {"color": "green"}, steps=4, output_type="np").images
    assert np.array_equal(same, edited)  # the factual values read from the rows of a dataset
    inverted = pipe.invert(images, rows, steps=4, inversion_depth=1.0)
    assert inverted.latents.shape == (3, 3, 8, 8) and len(inverted.path) == 5


def test_bad_input_is_refused(generator: Path) -> None:
    pipe = CounterfactualPipeline.from_pretrained(generator)
    images, rows = sources(generator, 2)
    with pytest.raises(CfgenError, match="images are 9x9 RGB; this generator works on 8x8 RGB"):
        pipe([image.resize((9, 9)) for image in images], rows, "color=red")
    with pytest.raises(CfgenError, match="lacks 'shape'"):
        pipe(images, [{"y": "0", "color": "red"}] * 2, "color=red")
    with pytest.raises(CfgenError, match="'purple' is not a value of 'color'"):
        pipe(images, rows, "color=purple")
    with pytest.raises(CfgenError, match="2 images but 1 rows"):
        pipe(images, rows[:1], "color=red")


def test_a_folder_from_before_the_pipeline_still_loads(noise_generator: Path, tmp_path: Path) -> None:
    generator = noise_generator
    old = Path(shutil.copytree(generator, tmp_path / "old"))
    (old / "model_index.json").unlink()
    shutil.rmtree(old / "inverse_scheduler")
    ddpm = DDPMScheduler.from_config(DDPMScheduler.load_config(old / "scheduler"))
    shutil.rmtree(old / "scheduler")
    ddpm.save_pretrained(old / "scheduler")
    config = json.loads((old / "cfgen_generator.json").read_text())
    del config["standardization"], config["ties"]
    (old / "cfgen_generator.json").write_text(json.dumps(config))
    images, rows = sources(generator, 2)
    loaded = CounterfactualPipeline.load(old)
    assert loaded.scheduler.config.prediction_type == loaded.inverse_scheduler.config.prediction_type == "epsilon"
    before = loaded(images, rows, "color=red", steps=4, output_type="np").images
    now = CounterfactualPipeline.from_pretrained(generator)(images, rows, "color=red", steps=4, output_type="np")
    assert np.array_equal(before, now.images)
    with pytest.raises(CfgenError, match="--direction untied needs the variables the generator's training rows tie"):
        loaded(images, rows, "color=red", steps=4, direction="untied")  # it has no record of them
    index = json.loads((generator / "model_index.json").read_text())
    del index["ties"]
    (old / "model_index.json").write_text(json.dumps(index))  # a pipeline config from before ties, read by diffusers
    shutil.copytree(generator / "inverse_scheduler", old / "inverse_scheduler")
    shutil.rmtree(old / "scheduler")
    shutil.copytree(generator / "scheduler", old / "scheduler")
    assert CounterfactualPipeline.from_pretrained(old).model.ties == {}
    store_inference(old, {})  # rewrites the card from the record
    assert (
        "Tied in these rows (`ties`; `--direction untied` guides each without the other): not recorded"
        in (old / "README.md").read_text()
    )
