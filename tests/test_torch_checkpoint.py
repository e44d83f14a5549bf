"""The torch-free checkpoint reader: formats, dtypes, views, shared storages, and refusal of code.

torch is not installed, so the checkpoints are written here the way ``torch.save`` writes them
(torch/serialization.py ``_save`` and ``_legacy_save``, torch/_tensor.py ``__reduce_ex__``):

* zip: ``archive/data.pkl`` is a protocol-2 pickle whose tensors reduce to
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())``
  and whose storages are persistent ids ``('storage', torch.FloatStorage, key, 'cpu', numel)``,
  keys numbered in order of first use; raw bytes in ``archive/data/<key>``; plus
  ``archive/byteorder``, ``archive/version``, ``archive/.data/version``;
* legacy: pickles of MAGIC_NUMBER, 1001, sys_info, the object (persistent ids with a sixth
  ``view_metadata`` item), the sorted storage keys, then per storage an int64 count + bytes;
* plain pickle of a tensor: the storage reduces to ``torch.storage._load_from_bytes(b)`` where
  ``b`` is the storage ``torch.save``'d in the legacy format.

The GLOBAL opcodes are written by a pure-Python pickler that knows the stand-in ``FakeGlobal``.
"""

from __future__ import annotations

import argparse
import ast
import io
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from gohd_jax.interop import torch_checkpoint as tc
from gohd_jax.interop.torch_checkpoint import (
    CheckpointKeyError,
    TorchCheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    load_torch_checkpoint,
    load_torch_checkpoint_bytes,
    state_dict_from,
)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C

# ----------------------------------------------------------------------------------------------
# A faithful torch.save writer (no torch).


class FakeGlobal:
    """Pickles as ``GLOBAL module name`` (what pickle writes for torch's own functions/classes)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce requires a callable
        raise AssertionError("never called")


_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class FakeStorage:
    """A typed storage: 1-D data. ``untyped=True`` pickles as torch.UntypedStorage (bytes)."""

    def __init__(self, data: np.ndarray, untyped: bool = False):
        self.data = np.ascontiguousarray(data).reshape(-1)
        self.untyped = untyped

    @property
    def type_global(self):
        return FakeGlobal("torch", "UntypedStorage" if self.untyped else _STORAGE_NAMES[self.data.dtype])

    @property
    def numel(self):
        return self.data.nbytes if self.untyped else self.data.size


class FakeTensor:
    def __init__(self, storage: FakeStorage, offset: int, size, stride, *, v3_dtype: str | None = None):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
        self.v3_dtype = v3_dtype

    def __reduce_ex__(self, protocol):
        if self.v3_dtype is not None:  # new dtypes: untyped storage + explicit dtype
            return (FakeGlobal("torch._utils", "_rebuild_tensor_v3"),
                    (self.storage, self.offset, self.size, self.stride, False, OrderedDict(),
                     FakeGlobal("torch", self.v3_dtype)))
        return (FakeGlobal("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, self.size, self.stride, False, OrderedDict()))


class FakeParameter:
    def __init__(self, tensor: FakeTensor):
        self.tensor = tensor

    def __reduce_ex__(self, protocol):
        return (FakeGlobal("torch._utils", "_rebuild_parameter"), (self.tensor, True, OrderedDict()))


class FakeParameterV2:
    """A Parameter through torch._tensor._rebuild_from_type_v2 (tensor subclasses with state)."""

    def __init__(self, tensor: FakeTensor):
        self.tensor = tensor

    def __reduce_ex__(self, protocol):
        inner = self.tensor.__reduce_ex__(protocol)
        return (FakeGlobal("torch._tensor", "_rebuild_from_type_v2"),
                (inner[0], FakeGlobal("torch.nn.parameter", "Parameter"), inner[1], {}))


def tensor(arr: np.ndarray) -> FakeTensor:
    """A contiguous tensor owning its storage."""
    arr = np.ascontiguousarray(arr)
    strides = tuple(s // arr.itemsize for s in arr.strides)
    return FakeTensor(FakeStorage(arr), 0, arr.shape, strides)


def state_dict(**tensors) -> OrderedDict:
    sd = OrderedDict(tensors)
    sd._metadata = OrderedDict({"": {"version": 1}})  # what nn.Module.state_dict() attaches
    return sd


class _TorchPickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_fake_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[FakeGlobal] = _save_fake_global


def _pickle(obj, persistent_id=None, protocol=2) -> bytes:
    buf = io.BytesIO()
    p = _TorchPickler(buf, protocol=protocol)
    if persistent_id is not None:
        p.persistent_id = persistent_id
    p.dump(obj)
    return buf.getvalue()


def torch_save_zip(obj, *, byteorder="little", prefix="archive") -> bytes:
    """torch.save(obj) in the zip format (torch >= 1.6)."""
    storages: dict[str, FakeStorage] = {}
    ids: dict[int, str] = {}

    def persistent_id(x):
        if isinstance(x, FakeStorage):
            key = ids.setdefault(id(x), str(len(ids)))
            storages[key] = x
            return ("storage", x.type_global, key, "cpu", x.numel)
        return None

    data_pkl = _pickle(obj, persistent_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data_pkl)
        z.writestr(f"{prefix}/byteorder", byteorder)
        for key in sorted(storages):
            data = storages[key].data
            if byteorder == "big":
                data = data.byteswap() if data.dtype.kind != "c" else data.view(f"<f{data.itemsize // 2}").byteswap()
            z.writestr(f"{prefix}/data/{key}", data.tobytes())
        z.writestr(f"{prefix}/version", "3\n")
        z.writestr(f"{prefix}/.data/version", "3\n")
    return buf.getvalue()


def torch_save_legacy(obj) -> bytes:
    """torch.save(obj, _use_new_zipfile_serialization=False)."""
    storages: dict[str, FakeStorage] = {}
    keys: dict[int, str] = {}

    def persistent_id(x):
        if isinstance(x, FakeStorage):
            # like str(storage._cdata): a pointer value, one per storage (``id(x) % prime`` collided
            # now and then among ArcFace's hundreds of storages: a "corrupt" file in CI)
            key = keys.setdefault(id(x), str(94000000 + 64 * len(keys)))
            storages[key] = x
            return ("storage", x.type_global, key, "cpu", x.numel, None)
        return None

    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    out = io.BytesIO()
    out.write(pickle.dumps(MAGIC_NUMBER, protocol=2))
    out.write(pickle.dumps(1001, protocol=2))
    out.write(pickle.dumps(sys_info, protocol=2))
    out.write(_pickle(obj, persistent_id))
    keys = sorted(storages)
    out.write(pickle.dumps(keys, protocol=2))
    for key in keys:
        s = storages[key]
        out.write(struct.pack("<q", s.numel))
        out.write(s.data.tobytes())
    return out.getvalue()


class _PlainTensorStorage(FakeStorage):
    """A storage pickled by plain ``pickle``: ``torch.storage._load_from_bytes(legacy bytes)``."""

    def __reduce_ex__(self, protocol):
        inner = FakeStorage(self.data)
        return (FakeGlobal("torch.storage", "_load_from_bytes"), (torch_save_legacy(inner),))


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ----------------------------------------------------------------------------------------------
# The object that every format round-trips.


def _rich_checkpoint():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    shared = FakeStorage(np.arange(10, dtype=np.float32))
    base = rng.standard_normal((3, 5)).astype(np.float32)
    base_t = FakeStorage(base)
    expected = {
        "module.enc.weight": w,
        "module.enc.bias": np.float16([1.5, -2.25, 3.0]),
        "module.enc.transposed": base.T,                      # non-contiguous view
        "module.enc.shared_a": np.arange(10, dtype=np.float32)[2:6].reshape(2, 2),
        "module.enc.shared_b": np.arange(10, dtype=np.float32)[5:10],  # overlaps shared_a
        "module.enc.steps": np.array([[1, -2, 2**40]], np.int64),
        "module.enc.mask": np.array([True, False, True]),
        "module.enc.bf16": np.array([1.0, -0.5, 3.0], ml_dtypes.bfloat16),
        "module.enc.scalar": np.array(7.0, np.float64),       # 0-d
        "module.enc.empty": np.zeros((0, 3), np.float32),
        "module.dec.param": np.float32([[0.25, 0.5]]),
    }
    sd = state_dict(**{
        "module.enc.weight": tensor(w),
        "module.enc.bias": tensor(expected["module.enc.bias"]),
        "module.enc.transposed": FakeTensor(base_t, 0, (5, 3), (1, 5)),
        "module.enc.shared_a": FakeTensor(shared, 2, (2, 2), (2, 1)),
        "module.enc.shared_b": FakeTensor(shared, 5, (5,), (1,)),
        "module.enc.steps": tensor(expected["module.enc.steps"]),
        "module.enc.mask": tensor(expected["module.enc.mask"]),
        "module.enc.bf16": tensor(expected["module.enc.bf16"]),
        "module.enc.scalar": FakeTensor(FakeStorage(np.float64([7.0])), 0, (), ()),
        "module.enc.empty": FakeTensor(FakeStorage(np.zeros(0, np.float32)), 0, (0, 3), (3, 1)),
        "module.dec.param": FakeParameter(tensor(expected["module.dec.param"])),
    })
    exp_avg = np.float32([0.1, 0.2])
    obj = {
        "gen_pose": sd,
        "optimizer": {"state": {0: {"step": 10, "exp_avg": tensor(exp_avg)}},
                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99), "params": [0],
                                        "amsgrad": False, "name": None}]},
        "args": argparse.Namespace(size=256, latent_dim_motion=20, name="vox"),
        "epoch": 20,
        "np_scalar": np.float64(3.5),
        "np_array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "blob": b"\x00\xffraw",
    }
    return obj, expected, exp_avg


def _check_rich(loaded, expected, exp_avg):
    sd = loaded["gen_pose"]
    assert list(sd) == list(expected)  # order kept
    for k, want in expected.items():
        got = sd[k]
        assert isinstance(got, np.ndarray), k
        assert got.dtype == want.dtype, (k, got.dtype, want.dtype)
        assert got.shape == want.shape, (k, got.shape, want.shape)
        np.testing.assert_array_equal(got, want, err_msg=k)
        assert got.flags.c_contiguous and got.flags.writeable, k
    # Views of one storage are independent arrays afterwards.
    sd["module.enc.shared_a"][0, 0] = 99
    assert sd["module.enc.shared_b"][0] == 5
    opt = loaded["optimizer"]
    assert opt["state"][0]["step"] == 10
    np.testing.assert_array_equal(opt["state"][0]["exp_avg"], exp_avg)
    assert opt["param_groups"][0]["betas"] == (0.9, 0.99)
    assert loaded["args"] == {"size": 256, "latent_dim_motion": 20, "name": "vox"}
    assert loaded["epoch"] == 20
    assert loaded["np_scalar"] == 3.5 and loaded["np_scalar"].dtype == np.float64
    np.testing.assert_array_equal(loaded["np_array"], np.arange(6, dtype=np.int32).reshape(2, 3))
    assert loaded["blob"] == b"\x00\xffraw"
    assert type(loaded) is dict and type(sd) is dict


# ----------------------------------------------------------------------------------------------
# Round trips.


def test_zip_format_round_trip(tmp_path):
    obj, expected, exp_avg = _rich_checkpoint()
    path = _write(tmp_path, "ckpt.pt", torch_save_zip(obj))
    _check_rich(load_torch_checkpoint(path), expected, exp_avg)
    assert "torch" not in sys.modules


def test_zip_any_prefix_and_big_endian(tmp_path):
    obj, expected, exp_avg = _rich_checkpoint()
    path = _write(tmp_path, "vgg19-dcbb9e9d.pth", torch_save_zip(obj, byteorder="big", prefix="vgg19-dcbb9e9d"))
    _check_rich(load_torch_checkpoint(path), expected, exp_avg)


def test_legacy_format_round_trip(tmp_path):
    obj, expected, exp_avg = _rich_checkpoint()
    path = _write(tmp_path, "L2CSNet_gaze360.pkl", torch_save_legacy(obj))
    _check_rich(load_torch_checkpoint(path), expected, exp_avg)


def test_plain_pickle_of_tensors_uses_nested_legacy_storages(tmp_path):
    a = np.float32([[1, 2, 3], [4, 5, 6]])
    storage = _PlainTensorStorage(a)
    obj = {"w": FakeTensor(storage, 0, (3, 2), (1, 3)), "n": 3}
    path = _write(tmp_path, "plain.pkl", _pickle(obj))
    loaded = load_torch_checkpoint(path)
    np.testing.assert_array_equal(loaded["w"], a.T)
    assert loaded["n"] == 3


class OldTensor(FakeTensor):
    """torch < 0.4: ``(torch.FloatTensor, (), (storage, offset, size, stride))``, i.e. an empty
    tensor filled by ``Tensor.__setstate__`` (BUILD); still accepted by torch.load(weights_only)."""

    def __reduce_ex__(self, protocol):
        name = _STORAGE_NAMES[self.storage.data.dtype].replace("Storage", "Tensor")
        return (FakeGlobal("torch", name), (), (self.storage, self.offset, self.size, self.stride))


def test_pre_0_4_tensor_pickles_in_legacy_files(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    st = FakeStorage(w)
    obj = OrderedDict([("features.0.weight", OldTensor(st, 0, (3, 4), (4, 1))),
                       ("features.0.weight_t", OldTensor(st, 0, (4, 3), (1, 4))),
                       ("features.0.bias", OldTensor(FakeStorage(np.int64([5, 6])), 1, (1,), (1,)))])
    got = load_torch_checkpoint(_write(tmp_path, "vgg_old.pth", torch_save_legacy(obj)))
    np.testing.assert_array_equal(got["features.0.weight"], w)
    np.testing.assert_array_equal(got["features.0.weight_t"], w.T)
    np.testing.assert_array_equal(got["features.0.bias"], np.int64([6]))


def test_rebuild_v3_untyped_storage_and_parameter_subclass():
    u16 = np.array([1, 65535, 7], np.uint16)
    f8 = np.array([0.5, -2.0], ml_dtypes.float8_e4m3fn)
    w = np.float32([[1, 2], [3, 4]])
    obj = state_dict(
        u16=FakeTensor(FakeStorage(u16, untyped=True), 0, (3,), (1,), v3_dtype="uint16"),
        f8=FakeTensor(FakeStorage(f8, untyped=True), 0, (2,), (1,), v3_dtype="float8_e4m3fn"),
        p=FakeParameterV2(tensor(w)),
    )
    got = load_torch_checkpoint_bytes(torch_save_zip(obj))
    np.testing.assert_array_equal(got["u16"], u16)
    assert got["f8"].dtype == f8.dtype
    np.testing.assert_array_equal(got["f8"].astype(np.float32), f8.astype(np.float32))
    np.testing.assert_array_equal(got["p"], w)


def test_state_dict_from_selects_and_strips(tmp_path):
    obj, expected, _ = _rich_checkpoint()
    path = _write(tmp_path, "ckpt.pt", torch_save_zip(obj))
    ckpt = load_torch_checkpoint(path)
    sd = state_dict_from(ckpt, key="gen_pose")  # 'module.' stripped: every key has it
    assert list(sd) == [k[len("module."):] for k in expected]
    np.testing.assert_array_equal(sd["enc.weight"], expected["module.enc.weight"])
    assert list(state_dict_from(ckpt, "gen_pose", strip_prefix=False)) == list(expected)
    enc = state_dict_from(path, "gen_pose", strip_prefix=("module.enc.", "module."))
    assert "weight" in enc and "dec.param" in enc
    with pytest.raises(CheckpointKeyError, match=r"no key 'model'.*'gen_pose'.*state dicts: \['gen_pose'\]"):
        state_dict_from(ckpt, key="model")
    with pytest.raises(CheckpointKeyError, match="not a flat state dict.*pass key= one of \\['gen_pose'\\]"):
        state_dict_from(ckpt)
    with pytest.raises(CheckpointKeyError, match="no key starts with \\['net.'\\]"):
        state_dict_from(ckpt, "gen_pose", strip_prefix="net.")
    with pytest.raises(CheckpointKeyError, match=r"cannot index checkpoint\['epoch'\]"):
        state_dict_from(ckpt, ("epoch", "x"))
    with pytest.raises(TorchCheckpointError, match="no such checkpoint file"):
        state_dict_from(tmp_path / "missing.pt", "gen_pose")


# ----------------------------------------------------------------------------------------------
# Refusing code.


class _Reduce:
    """Pickles as ``func(*args)`` with ``func`` written as GLOBAL module.name."""

    def __init__(self, module, name, *args):
        self.g, self.args = FakeGlobal(module, name), args

    def __reduce_ex__(self, protocol):
        return (self.g, self.args)


def _payloads(marker):
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Reduce("os", "system", cmd),
        "posix.system": _Reduce("posix", "system", cmd),
        "builtins.eval": _Reduce("builtins", "eval", code),
        "builtins.exec": _Reduce("builtins", "exec", code),
        "__builtin__.eval": _Reduce("__builtin__", "eval", code),
        "subprocess.Popen": _Reduce("subprocess", "Popen", ["touch", str(marker)]),
        "builtins.getattr": _Reduce("builtins", "getattr", 0, "real"),
        "torch.load": _Reduce("torch", "load", str(marker)),
    }


def _containers(payload):
    """The payload hidden inside an otherwise ordinary state dict, in each file format."""
    obj = {"state_dict": state_dict(w=tensor(np.ones(3, np.float32)), evil=payload)}
    plain_w = FakeTensor(_PlainTensorStorage(np.ones(3, np.float32)), 0, (3,), (1,))
    return {
        "zip": torch_save_zip(obj),
        "legacy": torch_save_legacy(obj),
        "plain": _pickle({"state_dict": state_dict(w=plain_w, evil=payload)}),
    }


def test_payloads_are_live_with_plain_pickle(tmp_path):
    """Sanity check of the attack: plain pickle.loads of the exec payload does create the marker."""
    marker = tmp_path / "pwned"
    data = _pickle(_payloads(marker)["builtins.exec"])
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "posix.system", "builtins.eval", "builtins.exec",
                                  "__builtin__.eval", "subprocess.Popen", "builtins.getattr",
                                  "torch.load"])
def test_malicious_globals_are_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    name = {"__builtin__.eval": "builtins.eval"}.get(kind, kind)
    for fmt, data in _containers(payload).items():
        path = _write(tmp_path, f"evil_{fmt}.pt", data)
        with pytest.raises(UnsafeCheckpointError) as info:
            load_torch_checkpoint(path)
        msg = str(info.value)
        assert f"'{name}'" in msg and str(path) in msg and "\n" not in msg, msg
        assert not marker.exists(), (kind, fmt)


@pytest.mark.parametrize("protocol", [0, 1, 4, 5])
def test_other_pickle_protocols_are_refused(tmp_path, protocol):
    """Protocol 0/1 (GLOBAL/INST paths) and 4/5 (STACK_GLOBAL) all go through the allow-list."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    data = pickle.dumps({"x": [1, Evil()]}, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        load_torch_checkpoint_bytes(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data)
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        load_torch_checkpoint_bytes(buf.getvalue())
    assert not marker.exists()


def test_whole_module_pickles_are_refused(tmp_path):
    obj = _Reduce("networks.generator", "Generator", 256)
    path = _write(tmp_path, "model.pt", torch_save_zip(obj))
    with pytest.raises(UnsafeCheckpointError, match="networks.generator.Generator"):
        load_torch_checkpoint(path)


def test_build_cannot_modify_the_allowed_globals():
    """BUILD (setstate/setattr) on an allowed stand-in fails; the stand-in keeps working."""
    states = [b"N}(X\x0c\x00\x00\x00__defaults__Nu\x86",  # (None, {'__defaults__': None})
              b"}(X\x07\x00\x00\x00__doc__X\x01\x00\x00\x00xu"]  # {'__doc__': 'x'}
    targets = [b"ctorch._utils\n_rebuild_tensor_v2\n", b"cargparse\nNamespace\n",
               b"ctorch\nFloatStorage\n", b"ccollections\nOrderedDict\n"]
    for state in states:
        for target in targets:
            data = b"\x80\x02" + target + state + b"b."
            with pytest.raises(TorchCheckpointError) as e:
                load_torch_checkpoint_bytes(data)
            assert "invalid load key" not in str(e.value)  # the opcodes parsed; BUILD itself failed
    got = load_torch_checkpoint_bytes(torch_save_zip({"w": tensor(np.float32([1, 2]))}))
    np.testing.assert_array_equal(got["w"], [1, 2])


def test_object_dtype_numpy_is_refused():
    data = pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="object dtype"):
        load_torch_checkpoint_bytes(data)


def test_out_of_bounds_view_is_an_error_not_a_read():
    st = FakeStorage(np.arange(6, dtype=np.float32))
    for t in [FakeTensor(st, 0, (3, 3), (3, 1)), FakeTensor(st, 5, (2,), (1,)),
              FakeTensor(st, 0, (2,), (-1,))]:
        with pytest.raises(TorchCheckpointError, match="storage|geometry"):
            load_torch_checkpoint_bytes(torch_save_zip({"t": t}))


# ----------------------------------------------------------------------------------------------
# Broken files.


def test_truncated_and_corrupt_files(tmp_path):
    obj, _, _ = _rich_checkpoint()
    good = torch_save_zip(obj)
    cases = {
        "truncated_zip": (good[: len(good) // 2], "truncated or corrupt"),
        "empty": (b"", "empty"),
        "garbage": (b"hello, not a checkpoint" * 10, "not a PyTorch checkpoint"),
        "truncated_legacy": (torch_save_legacy(obj)[:-5], "truncated"),
        "truncated_pickle": (_pickle({"a": 1})[:-3], "corrupt or truncated pickle"),
    }
    # Flip one byte inside the first storage record: the zip's CRC catches it.
    z = zipfile.ZipFile(io.BytesIO(good))
    info = z.getinfo("archive/data/0")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    bad = bytearray(good)
    bad[start] ^= 0xFF
    cases["bad_crc"] = (bytes(bad), "truncated or corrupt")
    # A storage record shorter than the persistent id says.
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(buf, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n)[:4] if n == "archive/data/0" else src.read(n))
    cases["short_storage"] = (buf.getvalue(), "truncated or corrupt")
    for name, (data, msg) in cases.items():
        path = _write(tmp_path, f"{name}.pt", data)
        with pytest.raises(TorchCheckpointError, match=msg) as e:
            load_torch_checkpoint(path)
        assert str(path) in str(e.value) and not isinstance(e.value, UnsafeCheckpointError), name
    with pytest.raises(TorchCheckpointError, match="no such checkpoint file"):
        load_torch_checkpoint(tmp_path / "nope.pth")


def test_torchscript_archive_is_unsupported_with_clear_message(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model/constants.pkl", pickle.dumps(()))
        z.writestr("model/code/__torch__/m.py", "def forward(self): pass\n")
        z.writestr("model/data.pkl", b"\x80\x02c__torch__\nM\n)\x81.")
    path = _write(tmp_path, "scripted.pt", buf.getvalue())
    monkeypatch.setitem(sys.modules, "torch", None)  # make sure no torch fallback is possible
    with pytest.raises(UnsupportedCheckpointError, match="TorchScript.*torch is not installed"):
        load_torch_checkpoint(path)
    with pytest.raises(UnsupportedCheckpointError, match="TorchScript"):
        load_torch_checkpoint(path, allow_torch_fallback=False)


def test_torch_fallback_only_for_unsupported_files(tmp_path, monkeypatch):
    """With torch importable, unsupported (not unsafe, not corrupt) files go to
    torch.load(weights_only=True); a stand-in torch module records the calls."""
    import types

    calls = []
    fake = types.ModuleType("torch")
    fake.Tensor = type("Tensor", (), {})
    fake.bfloat16 = object()

    def load(path, map_location=None, weights_only=False):
        calls.append((str(path), map_location, weights_only))
        return {"answer": [1, (2, 3)]}

    fake.load = load
    monkeypatch.setitem(sys.modules, "torch", fake)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/constants.pkl", b"")
        z.writestr("m/data.pkl", b"")
    scripted = _write(tmp_path, "scripted.pt", buf.getvalue())
    assert load_torch_checkpoint(scripted) == {"answer": [1, (2, 3)]}
    assert calls == [(str(scripted), "cpu", True)]
    evil = _write(tmp_path, "evil.pt", torch_save_zip({"x": _Reduce("os", "system", "true")}))
    with pytest.raises(UnsafeCheckpointError):
        load_torch_checkpoint(evil)
    with pytest.raises(TorchCheckpointError, match="truncated or corrupt"):
        load_torch_checkpoint(_write(tmp_path, "cut.pt", torch_save_zip({"a": 1})[:40]))
    assert len(calls) == 1  # neither the unsafe nor the corrupt file reached torch


def test_quantized_tensors_are_unsupported_not_unsafe():
    q = _Reduce("torch._utils", "_rebuild_qtensor", 1, 2)
    with pytest.raises(UnsupportedCheckpointError, match="quantized"):
        load_torch_checkpoint_bytes(torch_save_zip({"q": q}))


def test_torch_is_only_an_optional_fallback():
    """No module-level torch import: the one ``import torch`` sits inside the fallback function."""
    with open(tc.__file__) as f:
        tree = ast.parse(f.read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not any(n == "torch" or n.startswith("torch.") for n in names), names
    fallback = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_torch_fallback")
    assert any(isinstance(n, ast.Import) and n.names[0].name == "torch" for n in ast.walk(fallback))


# ----------------------------------------------------------------------------------------------
# Files written by real torch.save (tests/fixtures/make_torch_checkpoints.py, torch 2.13.0).

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_REAL_STATE_DICT_KEYS = [
    "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
    "1.num_batches_tracked", "3.weight", "3.bias", "extra.half", "extra.bf16", "extra.special",
    "extra.index", "extra.bytes", "extra.mask", "extra.scalar", "extra.weight_t", "extra.shared_base",
    "extra.shared_rows", "extra.param"]


def _tensors_by_path(obj, path=""):
    """The arrays in a loaded checkpoint under the fixture's ``torch_expected.npz`` key scheme."""
    if isinstance(obj, np.ndarray):
        return {path + ("@bfloat16" if obj.dtype == ml_dtypes.bfloat16 else ""): obj}
    out = {}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return out
    for k, v in items:
        out.update(_tensors_by_path(v, f"{path}/{k}" if path else str(k)))
    return out


@pytest.mark.parametrize("name", ["torch_zip.pt", "torch_legacy.pt"])
def test_real_torch_save_files(name):
    """Checkpoints written by real torch.save (zip and legacy formats) read without torch."""
    obj = load_torch_checkpoint(FIXTURES / name, allow_torch_fallback=False)
    with np.load(FIXTURES / "torch_expected.npz") as npz:
        expected = {k: npz[k] for k in npz.files}

    assert type(obj) is dict and list(obj) == ["state_dict", "epoch", "best_loss", "optimizer", "args"]
    assert obj["epoch"] == 3 and type(obj["epoch"]) is int
    assert obj["best_loss"] == 0.25
    assert obj["args"] == {"lr": 1e-2, "batch_size": 8, "name": "tiny", "milestones": [10, 20], "use_amp": False}
    sd = obj["state_dict"]
    assert type(sd) is dict and list(sd) == _REAL_STATE_DICT_KEYS  # OrderedDict, _metadata dropped
    opt = obj["optimizer"]
    assert list(opt) == ["state", "param_groups"] and list(opt["state"]) == [0, 1]
    assert all(list(s) == ["step", "exp_avg", "exp_avg_sq"] for s in opt["state"].values())
    (group,) = opt["param_groups"]
    assert group["params"] == [0, 1] and group["lr"] == 1e-2 and group["betas"] == (0.9, 0.999)
    assert group["amsgrad"] is False and group["foreach"] is None

    got = _tensors_by_path(obj)
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        arr = got[key]
        assert arr.flags.c_contiguous and arr.flags.writeable, key
        if key.endswith("@bfloat16"):
            assert arr.dtype == ml_dtypes.bfloat16 and want.dtype == np.float32, key
            arr = arr.astype(np.float32)  # exact: every bfloat16 is a float32
        else:
            assert arr.dtype == want.dtype, (key, arr.dtype, want.dtype)
        assert arr.shape == want.shape, (key, arr.shape, want.shape)
        np.testing.assert_array_equal(arr, want, err_msg=key)
        assert arr.tobytes() == want.tobytes(), key  # bit-exact: -0.0, nan, subnormals

    assert sd["0.weight"].shape == (3, 2, 3, 3) and sd["0.weight"].dtype == np.float32
    assert sd["1.num_batches_tracked"].shape == () and sd["1.num_batches_tracked"] == 1
    assert sd["extra.scalar"].shape == () and sd["extra.scalar"] == 2.5
    assert opt["state"][0]["step"].shape == () and opt["state"][0]["step"] == 1.0
    assert sd["extra.index"].tolist() == [3, -1, 2**40, -(2**62)]
    assert sd["extra.mask"].tolist() == [[True, False, True], [False, False, True]]
    assert sd["extra.weight_t"].shape == (5, 3)  # saved transposed (stride (1, 5)), read contiguous
    # Two tensors of one storage: the slice sits at storage offset 5 of base's 20 elements.
    base, rows = sd["extra.shared_base"], sd["extra.shared_rows"]
    np.testing.assert_array_equal(base, np.arange(20, dtype=np.float32).reshape(4, 5))
    np.testing.assert_array_equal(rows, base[1:3])
    assert not np.shares_memory(base, rows)  # separate arrays, as documented

    picked = state_dict_from(obj, key="state_dict")
    assert list(picked) == _REAL_STATE_DICT_KEYS
    assert all(picked[k] is sd[k] for k in picked)
