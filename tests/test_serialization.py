"""Safe weight loading: safetensors and torch state dicts load; pickled code and garbage are
refused with errors that say what is wrong (and how to opt in for a trusted file)."""

import random
import pickle

import pytest
import torch

from torchwm_rl.serialization import (
    UnsafeWeightsError,
    WeightsFormatError,
    load_weights,
    read_metadata,
    save_weights,
)


class NotWeights:
    """A pickled instance of this class is code-bearing, not weights."""

    def __init__(self):
        self.value = 3


def test_safetensors_round_trip_with_metadata(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    path = save_weights(sd, tmp_path / "m.safetensors", {"hidden": 64})
    loaded = load_weights(path)
    assert set(loaded) == {"w", "b"} and torch.equal(loaded["w"], sd["w"])
    assert read_metadata(path) == {"hidden": "64"}


def test_torch_state_dict_loads_with_weights_only(tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "m.pt")
    assert set(load_weights(tmp_path / "m.pt")) == {"weight", "bias"}
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "ckpt.pt")
    assert set(load_weights(tmp_path / "ckpt.pt")) == {"w"}


def test_pickled_module_is_refused_unless_trusted(tmp_path):
    torch.save(torch.nn.Linear(3, 2), tmp_path / "module.pt")
    with pytest.raises(UnsafeWeightsError, match="trust_code=True"):
        load_weights(tmp_path / "module.pt")
    assert set(load_weights(tmp_path / "module.pt", trust_code=True)) == {"weight", "bias"}
    assert set(load_weights(tmp_path / "module.pt", allow_pickle=True)) == {"weight", "bias"}


def test_pickled_object_is_refused(tmp_path):
    with open(tmp_path / "obj.pkl", "wb") as fh:
        pickle.dump(NotWeights(), fh)
    with pytest.raises(UnsafeWeightsError, match="can run code"):
        load_weights(tmp_path / "obj.pkl")
    # even when trusted, an object that is not a state dict is not weights
    with pytest.raises(WeightsFormatError, match="state dict"):
        load_weights(tmp_path / "obj.pkl", trust_code=True)


# fixed "random" bytes: os.urandom in a parameter made the test ids differ between pytest-xdist
# workers, which then refuse to run the suite ("Different tests were collected")
@pytest.mark.parametrize(
    "content", [random.Random(0).randbytes(256), b"hello world, not weights", b""],
    ids=["random-bytes", "text", "empty"],
)
@pytest.mark.parametrize("name", ["garbage.pt", "garbage.bin"])
def test_garbage_file_is_a_format_error(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsFormatError, match="not a safetensors or torch weights file"):
        load_weights(path)


def test_corrupt_safetensors_is_a_format_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsFormatError, match="safetensors"):
        load_weights(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "nope.safetensors")


def test_non_tensor_mapping_is_rejected(tmp_path):
    torch.save({"lr": 0.1, "name": "x"}, tmp_path / "cfg.pt")
    with pytest.raises(WeightsFormatError, match="non-tensor"):
        load_weights(tmp_path / "cfg.pt")


class _TouchOnLoad:
    """Unpickling this runs code (creates a file): the loader must refuse before that happens."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_code_in_pickle_never_runs_by_default(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        with open(path, "wb") as fh:
            pickle.dump({"w": _TouchOnLoad(marker)}, fh)
    else:
        torch.save({"w": _TouchOnLoad(marker)}, path)
    with pytest.raises(UnsafeWeightsError):
        load_weights(path)
    assert not marker.exists()


def test_errors_name_what_is_wrong(tmp_path):
    """Refused, with the file and the reason: an empty state dict (load_weights could not read
    it back), metadata of a non-safetensors file, a weights file of another model for the zoo."""
    from torchwm_rl import zoo
    from torchwm_rl.serialization import WeightsFormatError, read_metadata, save_weights

    with pytest.raises(ValueError, match="the state dict is empty"):
        save_weights({}, tmp_path / "empty.safetensors")
    assert not (tmp_path / "empty.safetensors").exists()
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(WeightsFormatError, match="metadata is read from safetensors files only"):
        read_metadata(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        read_metadata(tmp_path / "missing.safetensors")
    save_weights({"a": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(WeightsFormatError, match=r"not a CartPole model: no 'net.0.weight' tensor \(found \['a'\]\)"):
        zoo.load("cartpole", path=tmp_path / "other.safetensors")
