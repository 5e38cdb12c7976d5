"""One way to run a method (server, CLI and fixtures alike): validate, seed, then stream its events."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.errors import BadInput
from convlens.events import Log, Progress, Result
from convlens.methods import Method
from convlens.params import Int, Layer, Models, Picture
from convlens.runner import checked_model_ids, iterate, prepare_run
from convlens.testing import make_tiny_model


def draws(ctx):
    yield Result(
        data={
            "torch": torch.rand(3).tolist(),
            "numpy": np.random.rand(3).tolist(),
            "rng": ctx.rng.random(3).tolist(),
        }
    )


DRAWS = Method("draws", "Draws", "test", draws, params=(Int("n", 1, minimum=1, maximum=3), Layer()))


def test_prepare_run_validates_params_against_the_model(tiny_model):
    ctx = prepare_run(DRAWS, tiny_model, np.zeros((5, 6, 3), np.uint8), {"layer": "conv2"}, seed=3)
    assert ctx.params == {"n": 1, "layer": "conv2"}
    assert ctx.image.dtype == np.float32 and ctx.image.shape == (5, 6, 3) and ctx.seed == 3
    with pytest.raises(BadInput) as error:
        prepare_run(DRAWS, tiny_model, np.zeros((5, 6, 3)), {"layer": "conv9"})
    assert error.value.field == "params.layer"


def test_a_method_the_model_cannot_serve_is_refused_with_422():
    class NoGradients(type(make_tiny_model())):
        @property
        def capabilities(self):
            return frozenset({"layers"})

    tiny = make_tiny_model()
    model = NoGradients("frozen", tiny.module, tiny.card)
    method = Method("needs_grad", "t", "test", draws, needs=frozenset({"gradients"}))
    with pytest.raises(BadInput) as error:
        prepare_run(method, model, np.zeros((4, 4, 3)), {})
    assert (error.value.field, error.value.status) == ("model", 422)
    assert "gradients" in error.value.reason


def test_runs_are_reproducible_from_the_seed_even_if_generators_move_in_between(tiny_model):
    image = np.zeros((4, 4, 3))
    first = list(iterate(DRAWS, prepare_run(DRAWS, tiny_model, image, {}, seed=11)))[-1].data
    ctx = prepare_run(DRAWS, tiny_model, image, {}, seed=11)
    torch.rand(5), np.random.rand(5)  # another job ran in between
    second = list(iterate(DRAWS, ctx))[-1].data
    other = list(iterate(DRAWS, prepare_run(DRAWS, tiny_model, image, {}, seed=12)))[-1].data
    assert first == second
    assert all(first[key] != other[key] for key in first)


def test_stopping_closes_the_method_generator_at_once(tiny_model):
    closed = []

    def endless(ctx):
        try:
            step = 0
            while True:
                step += 1
                yield Progress(step, 0)
        finally:
            closed.append(step)

    method = Method("endless", "t", "test", endless)
    events = iterate(method, prepare_run(method, tiny_model, np.zeros((4, 4, 3)), {}))
    assert next(events).step == 1 and next(events).step == 2
    events.close()
    assert closed == [2]


def test_yielding_something_not_an_event_names_the_method(tiny_model):
    method = Method("chatty", "t", "test", lambda ctx: iter([Log("fine"), "not an event"]))
    with pytest.raises(TypeError, match="'chatty' yielded str"):
        list(iterate(method, prepare_run(method, tiny_model, np.zeros((4, 4, 3)), {})))


def mean_colour_of_style(ctx):
    yield Result(data={"mean": ctx.pictures["style"].mean(axis=(0, 1)).tolist(), "id": ctx.params["style"]})


STYLED = Method("styled", "Styled", "test", mean_colour_of_style, params=(Picture("style", "coffee"),))


def test_an_image_parameter_brings_its_pixels_in_ctx_pictures(tiny_model):
    from skimage import data

    ctx = prepare_run(STYLED, tiny_model, np.zeros((4, 4, 3), np.uint8), {"style": "astronaut"})
    picture = ctx.pictures["style"]
    assert picture.dtype == np.float32 and picture.shape == data.astronaut().shape
    assert np.allclose(picture, data.astronaut() / 255.0)
    result = list(iterate(STYLED, ctx))[-1]
    assert result.data["id"] == "astronaut"
    # The default is resolved too, and a source given by the caller (the server's library) is used.
    default = prepare_run(
        STYLED, tiny_model, np.zeros((4, 4, 3)), {}, images=lambda _id: np.full((2, 2, 3), 255)
    )
    assert default.params["style"] == "coffee" and (default.pictures["style"] == 1.0).all()


@pytest.mark.parametrize("value", ["no-such-image", "", 3])
def test_an_unknown_image_parameter_is_refused_by_name(tiny_model, value):
    with pytest.raises(BadInput) as error:
        prepare_run(STYLED, tiny_model, np.zeros((4, 4, 3)), {"style": value})
    assert error.value.field == "params.style"


class Shelf:
    """A model source of tiny nets by id, counting the loads; ``broken`` ids fail to load."""

    def __init__(self, ids, broken=()):
        self.names, self.broken, self.loads = list(ids), set(broken), []

    def ids(self):
        return list(self.names)

    def get(self, model_id):
        self.loads.append(model_id)
        if model_id in self.broken:
            raise BadInput("model", f"cannot load {model_id} (truncated file)")
        model = make_tiny_model(seed=self.names.index(model_id) + 1)
        model.id = model_id
        return model


def loaded_ids(ctx, name):
    return [model.id for model in ctx.models[name]]


COMPARED = Method(
    "compared",
    "t",
    "test",
    draws,
    params=(Models("models", run_model="first"), Models("transfer", None, run_model="excluded")),
)


def test_a_models_parameter_brings_the_loaded_models_in_order_with_the_run_model_placed(tiny_model):
    shelf = Shelf(["b.onnx", "tiny", "a.pt"])
    image = np.zeros((4, 4, 3))
    ctx = prepare_run(COMPARED, tiny_model, image, {"transfer": "*"}, models=shelf)
    assert loaded_ids(ctx, "models") == ["tiny", "b.onnx", "a.pt"]
    assert loaded_ids(ctx, "transfer") == ["b.onnx", "a.pt"]
    assert ctx.models["models"][0] is tiny_model  # the run's own, not loaded again
    ctx = prepare_run(
        COMPARED, tiny_model, image, {"models": ["a.pt", "tiny"], "transfer": ["tiny"]}, models=shelf
    )
    assert loaded_ids(ctx, "models") == ["tiny", "a.pt"] and loaded_ids(ctx, "transfer") == []
    # The others are the source's models, loaded as it loads them: distinct nets.
    other = ctx.models["models"][1]
    assert not torch.equal(other.module.fc.weight, tiny_model.module.fc.weight)
    assert "tiny" not in shelf.loads


def test_an_unknown_model_is_refused_by_name_before_anything_is_loaded(tiny_model):
    shelf = Shelf(["b.onnx", "a.pt"])
    with pytest.raises(BadInput) as error:
        checked_model_ids(COMPARED, {"models": "*", "transfer": ["a.pt", "c.pt"]}, "tiny", shelf)
    assert error.value.field == "params.transfer" and "'c.pt'" in error.value.reason
    with pytest.raises(BadInput) as error:
        prepare_run(COMPARED, tiny_model, np.zeros((4, 4, 3)), {"models": ["b"]}, models=shelf)
    assert error.value.field == "params.models"
    assert shelf.loads == []


def test_a_model_that_cannot_load_is_left_out_of_every_model_but_refused_when_named(tiny_model):
    shelf = Shelf(["a.pt", "bad.onnx", "c.pt2"], broken={"bad.onnx"})
    ctx = prepare_run(COMPARED, tiny_model, np.zeros((4, 4, 3)), {}, models=shelf)
    assert loaded_ids(ctx, "models") == ["tiny", "a.pt", "c.pt2"]
    assert ctx.models_left_out == {"bad.onnx": "cannot load bad.onnx (truncated file)"}
    with pytest.raises(BadInput) as error:
        prepare_run(COMPARED, tiny_model, np.zeros((4, 4, 3)), {"transfer": ["bad.onnx"]}, models=shelf)
    assert error.value.field == "params.transfer" and "truncated file" in error.value.reason


def test_every_model_takes_at_most_the_parameters_maximum_and_says_which_it_left_out(tiny_model):
    # Each digits run adds nets to the store; "*" must not load them all.
    shelf = Shelf([f"m{i}.onnx" for i in range(6)])
    capped = Method(
        "capped",
        "t",
        "test",
        draws,
        params=(
            Models("models", run_model="first", maximum=3),
            Models("transfer", None, run_model="excluded", maximum=4),
        ),
    )
    ctx = prepare_run(capped, tiny_model, np.zeros((4, 4, 3)), {"transfer": "*"}, models=shelf)
    assert loaded_ids(ctx, "models") == ["tiny", "m0.onnx", "m1.onnx"]
    assert loaded_ids(ctx, "transfer") == ["m0.onnx", "m1.onnx", "m2.onnx", "m3.onnx"]
    assert set(ctx.models_left_out) == {"m4.onnx", "m5.onnx"}  # m2 and m3 are in "transfer"
    assert "name others" in ctx.models_left_out["m5.onnx"]
    assert set(shelf.loads) == {"m0.onnx", "m1.onnx", "m2.onnx", "m3.onnx"}  # m4, m5 never loaded
