"""The allow-list: the only ``(module, name)`` globals a pickle may name, each mapped to a stand-in."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from .frozen import _SafeFunction
from .rebuild import (
    _NUMPY_NDARRAY,
    _builtin,
    _codecs_encode,
    _get_layout,
    _numpy_dtype,
    _numpy_reconstruct,
    _numpy_scalar,
    _ordered_dict,
    _rebuild_from_type_v2,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _torch_device,
    _torch_size,
    _unsupported,
)
from .standins import _NamespaceRecord, _ParameterClass, _StorageType, _TensorType, _TorchDtype


def _build_tables():
    g: dict[tuple[str, str], Any] = {}

    def fn(module, name, impl):
        g[(module, name)] = _SafeFunction(f"{module}.{name}", impl)

    for name, impl in [("_rebuild_tensor", _rebuild_tensor),
                       ("_rebuild_tensor_v2", _rebuild_tensor_v2),
                       ("_rebuild_tensor_v3", _rebuild_tensor_v3),
                       ("_rebuild_parameter", _rebuild_parameter),
                       ("_rebuild_parameter_with_state", _rebuild_parameter_with_state),
                       ("_rebuild_qtensor", _unsupported("quantized tensors")),
                       ("_rebuild_sparse_tensor", _unsupported("sparse tensors")),
                       ("_rebuild_sparse_csr", _unsupported("sparse tensors")),
                       ("_rebuild_nested_tensor", _unsupported("nested tensors")),
                       ("_rebuild_meta_tensor_no_storage", _unsupported("meta tensors")),
                       ("_rebuild_wrapper_subclass", _unsupported("tensor subclasses")),
                       ("_rebuild_device_tensor_from_numpy", _unsupported("numpy-backed device tensors")),
                       ("_rebuild_device_tensor_from_cpu_tensor", _unsupported("device tensors")),
                       ("_rebuild_xla_tensor", _unsupported("XLA tensors")),
                       ("_rebuild_mps_tensor", _unsupported("MPS tensors"))]:
        fn("torch._utils", name, impl)
    fn("torch._tensor", "_rebuild_from_type_v2", _rebuild_from_type_v2)
    fn("torch._tensor", "_rebuild_from_type", lambda func, type_, args, dict_:
       _rebuild_from_type_v2(func, type_, args, None))
    fn("collections", "OrderedDict", _ordered_dict)
    fn("torch", "Size", _torch_size)
    fn("torch", "device", _torch_device)
    fn("torch.serialization", "_get_layout", _get_layout)
    fn("_codecs", "encode", _codecs_encode)
    for kind in (set, frozenset, bytearray, complex):
        fn("builtins", kind.__name__, _builtin(kind))
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        fn(mod, "scalar", _numpy_scalar)
        fn(mod, "_reconstruct", _numpy_reconstruct)
    fn("numpy", "dtype", _numpy_dtype)
    g[("numpy", "ndarray")] = _NUMPY_NDARRAY
    g[("argparse", "Namespace")] = _NamespaceRecord
    g[("torch.nn.parameter", "Parameter")] = _ParameterClass
    g[("torch", "Tensor")] = _TensorType("torch.Tensor")
    g[("torch._tensor", "Tensor")] = g[("torch", "Tensor")]
    for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte",
                 "Bool"):
        for mod in ("torch", "torch.cuda"):
            g[(mod, f"{kind}Tensor")] = _TensorType(f"{mod}.{kind}Tensor")

    storages = {
        "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
        "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
        "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
        "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
        "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
    }
    for name, dtype in storages.items():
        for mod in ("torch", "torch.cuda"):
            g[(mod, name)] = _StorageType(name, dtype)
    g[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage", np.uint8)
    g[("torch", "TypedStorage")] = _StorageType("TypedStorage", np.uint8)

    dtypes = {
        "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
        "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
        "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
        "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8,
        "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
        "complex64": np.complex64, "cfloat": np.complex64, "complex128": np.complex128,
        "cdouble": np.complex128, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
        "float8_e5m2": ml_dtypes.float8_e5m2, "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
        "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    }
    for name, dtype in dtypes.items():
        g[("torch", name)] = _TorchDtype(name, dtype)
    return g


_ALLOWED = _build_tables()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
