"""safe_values: what a checkpoint may hold is checked at save time; NumPy comes back as NumPy;
restoring plain state keeps the user's own objects."""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from expckpt.errors import CheckpointError
from expckpt.state.safe_values import decode, encode, restore_in_place

FIX = (
    "which a safe checkpoint (torch.load weights_only=True) cannot store; keep tensors, numbers, strings, lists"
    " and dicts there, or give the object state_dict()/load_state_dict()"
)


def weights_only_round_trip(value: object) -> object:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_plain_values_pass_unchanged_and_uncopied() -> None:
    tensor = torch.arange(3)
    value = {
        "step": 3,
        "lr": 0.1,
        "name": "run",
        "none": None,
        "raw": b"\x00",
        "t": tensor,
        "l": [1, (2.0, "x")],
        "dtype": torch.float16,
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        "c": 1j,
    }
    assert encode(value, "extras") is value
    assert encode(tensor, "extras") is tensor


def test_numpy_values_are_tagged_so_they_load_safely_and_come_back_as_numpy() -> None:
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    value = {"a": array, "s": np.float32(1.5), "nested": [np.int64(7)], "keep": 1}
    encoded = encode(value, "extras")
    assert encoded is not value and encoded["keep"] == 1
    loaded = decode(weights_only_round_trip(encoded))
    assert isinstance(loaded["a"], np.ndarray) and loaded["a"].dtype == np.int16 and (loaded["a"] == array).all()
    assert type(loaded["s"]) is np.float32 and loaded["s"] == np.float32(1.5)
    assert type(loaded["nested"][0]) is np.int64 and loaded["nested"][0] == 7
    assert value["a"] is array  # the user's value is not modified


def test_a_read_only_array_is_copied_not_shared() -> None:
    array = np.arange(4.0)
    array.flags.writeable = False
    encoded = encode(array, "extras['x']")
    assert torch.equal(encoded["__expckpt_ndarray__"], torch.arange(4.0, dtype=torch.float64))


@pytest.mark.parametrize(
    ("value", "where", "what"),
    [
        (object(), "extras['x']", "a builtins.object"),
        ({"k": [1, {"deep": {1, 2}}]}, "extras['x']['k'][1]['deep']", "a builtins.set"),
        (np.array([{"a": 1}], dtype=object), "extras['x']", "a NumPy array of Python objects"),
        ({object: 1}, "extras['x'][<class 'object'>]", "a key of type type"),
        (Path("model.pt"), "extras['x']", "a pathlib.PosixPath"),
    ],
)
def test_anything_else_is_refused_naming_where_it_is(value: object, where: str, what: str) -> None:
    with pytest.raises(CheckpointError) as info:
        encode(value, "extras['x']")
    assert str(info.value) == f"{where} holds {what}, {FIX}"


def test_ordered_dicts_and_tuples_keep_their_type_and_metadata() -> None:
    state = OrderedDict(w=np.zeros(2))
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    encoded = encode(state, "model")
    assert type(encoded) is OrderedDict and encoded._metadata == {"": {"version": 1}}
    back = decode(encoded)
    assert type(back) is OrderedDict and isinstance(back["w"], np.ndarray)
    pair = decode(encode((np.int8(1), "b"), "t"))
    assert type(pair) is tuple and type(pair[0]) is np.int8


def test_decode_leaves_untagged_values_as_they_are() -> None:
    value = {"a": [1, 2], "b": {"__expckpt_ndarray__": "not a tensor"}, "c": {"x": torch.ones(1)}}
    back = decode(value)
    assert back["a"] == [1, 2] and back["b"] == {"__expckpt_ndarray__": "not a tensor"}  # a tag needs a tensor
    assert back["c"] is value["c"]  # an unchanged dict is returned as it is


def test_restore_in_place_keeps_the_identity_of_what_the_user_holds() -> None:
    weights = torch.zeros(3)
    counts = np.zeros(2)
    history: list[float] = [9.0]
    inner = {"seen": 1}
    target = {"w": weights, "n": counts, "h": history, "inner": inner, "gone": 5, "shape": torch.zeros(2)}
    saved = {
        "w": torch.ones(3),
        "n": np.ones(2),
        "h": [0.1, 0.2],
        "inner": {"seen": 4, "new": True},
        "shape": torch.ones(5),
        "added": "x",
    }
    restore_in_place(target, saved)
    assert target["w"] is weights and torch.equal(weights, torch.ones(3))
    assert target["n"] is counts and (counts == 1).all()
    assert target["h"] is history and history == [0.1, 0.2]
    assert target["inner"] is inner and inner == {"seen": 4, "new": True}
    assert "gone" not in target and target["added"] == "x"
    assert torch.equal(target["shape"], torch.ones(5))  # another shape: replaced, not copied into
