"""Grad-CAM on real Keras models: the heatmap falls where the score comes from."""

import numpy as np
import pytest

from core.imaging import Preprocessing
from core.previews import overlay_png

keras = pytest.importorskip("keras")

from worker.heatmaps import as_logit_model, grad_cam, target_layer  # noqa: E402

SIZE = 32


def region_only_model() -> "keras.Model":
    """A model whose score reads only the top-left quarter of its feature map."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    maps = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    corner = keras.layers.Cropping2D(((0, SIZE // 2), (0, SIZE // 2)))(maps)
    pooled = keras.layers.GlobalAveragePooling2D()(corner)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")(pooled)
    model = keras.Model(inputs, outputs)
    # Weights that make every feature count positively, so the score has something to show.
    kernel, bias = model.get_layer("features").get_weights()
    model.get_layer("features").set_weights([np.abs(kernel), bias])
    dense_kernel, dense_bias = model.get_layer("pneumonia").get_weights()
    model.get_layer("pneumonia").set_weights([np.abs(dense_kernel), dense_bias])
    return model


def test_the_heatmap_mass_lies_in_the_only_region_the_score_reads() -> None:
    model = as_logit_model(region_only_model())
    layer = target_layer(model)
    assert layer.name == "features"
    pixels = np.random.default_rng(0).uniform(0, 255, (SIZE, SIZE, 3))  # texture everywhere
    cam = grad_cam(model, layer, pixels)
    assert cam.shape == (SIZE, SIZE)
    assert cam.max() == pytest.approx(1.0)
    inside = cam[: SIZE // 2, : SIZE // 2].sum()
    assert inside / cam.sum() > 0.99
    # The tap on the layer is gone: the model computes as before.
    assert "call" not in vars(layer) or vars(layer)["call"].__func__ is type(layer).call


def test_the_logit_model_scores_before_the_sigmoid() -> None:
    model = region_only_model()
    pixels = np.full((1, SIZE, SIZE, 3), 128.0, np.float32)
    probability = float(model(pixels)[0, 0])
    logit = float(as_logit_model(model)(pixels)[0, 0])
    assert logit == pytest.approx(np.log(probability / (1 - probability)), abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("architecture", "layer_name", "grid"),
    [("baseline_cnn", "conv2", 19), ("inception_resnet_v2", "block35_10_ac", 7)],
)
def test_both_architectures_give_a_heatmap_from_a_map_of_7_or_more(
    architecture: str, layer_name: str, grid: int
) -> None:
    from training.model import make_model

    model = as_logit_model(make_model(architecture, 75))
    layer = target_layer(model)
    assert layer.name == layer_name
    cam = grad_cam(model, layer, np.random.default_rng(1).uniform(0, 255, (75, 75, 3)))
    assert cam.shape == (grid, grid)
    assert np.isfinite(cam).all()
    assert cam.min() >= 0
    assert cam.max() <= 1


def test_the_overlay_covers_the_trimmed_image_in_its_own_shape() -> None:
    import io

    from PIL import Image

    cam = np.zeros((4, 4))
    cam[0, 0] = 1.0  # the top-left cell of the model's input
    png = overlay_png(cam, (1000, 500), Preprocessing(trim=0.1))
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.size == (512, 256)
        alpha = np.asarray(picture)[..., 3]
    assert alpha[:25, :].max() == 0  # the trimmed top margin shows nothing
    assert alpha[:, :51].max() == 0  # nor the left one
    assert alpha[26:60, 52:150].max() > 100  # the top-left of what the model saw is warm
    assert alpha[200:, 400:].max() == 0


@pytest.mark.slow
def test_an_averaged_model_is_explained_through_a_member_on_the_image_itself() -> None:
    from training.model import averaged, make_model

    members = [make_model("baseline_cnn", 75), make_model("baseline_cnn", 75)]
    model = as_logit_model(averaged(members, views=2))
    layer = target_layer(model)
    assert layer.name == "conv2"
    cam = grad_cam(model, layer, np.random.default_rng(2).uniform(0, 255, (75, 75, 3)))
    assert cam.shape == (19, 19)
    assert cam.max() == pytest.approx(1.0)
