"""ArcFace iresnet weights -> ``gohd_jax.models.arcface.IResNet``, from the two files users hold,
and the ``gohd-parity`` checker of the ``arcface`` oracle.

1. **arcface_torch ``backbone.pth``** (the arcface_torch model zoo, e.g.
   ``ms1mv3_arcface_r100_fp16/backbone.pth``): a plain state dict, read torch-free by
   ``interop.torch_checkpoint``. Names: ``conv1``, ``bn1``, ``prelu``,
   ``layer{1-4}.{i}.{bn1, conv1, bn2, prelu, conv2, bn3}``, ``layer{1-4}.0.downsample.{0 (conv),
   1 (BN)}``, ``bn2``, ``fc``, ``features``. The depth (r50, r100, any 4 block counts) is read
   from the ``layer{s}.{i}`` names. Conv (out, in, kh, kw) -> (kh, kw, in, out); BN
   ``weight, bias, running_mean, running_var`` -> scale, bias, mean, var (``num_batches_tracked``
   dropped); PReLU [C] as is; ``fc.weight`` [512, 512*7*7] over torch's (C, H, W) flatten order
   -> kernel [7*7*512, 512] over the port's (H, W, C) order.

2. **insightface ONNX models** (``buffalo_l/w600k_r50.onnx``, ``antelopev2/glintr100.onnx``),
   read with the ``onnx`` package only (``onnx.load`` + ``numpy_helper``; nothing is executed).
   They are ``torch.onnx.export`` s of the same module (``recognition/arcface_torch/torch2onnx.py``,
   eval mode, constant folding on), so their initializers mostly have numeric names and their
   order is not the module's: the loader walks the graph's *data flow* from its input and
   rebuilds the torch state dict from what each node reads. What the export does to the module,
   and what the walk accepts:

   * a Conv followed by a BatchNormalization is fused: one ``Conv`` with a bias (the stem's
     conv1+bn1, each block's conv1+bn2 and conv2+bn3, the downsample conv+BN). The loader accepts
     fused (``Conv`` with bias) and unfused (``Conv`` [+ bias] -> ``BatchNormalization``) forms,
     and turns a fused bias into an identity BN holding it (scale 1, mean 0, var 1 - eps);
   * BatchNorms not preceded by a conv stay ``BatchNormalization`` nodes with their torch names
     (each block's ``bn1``, ``bn2``, ``features``); torch exports the 2-D ``features`` BatchNorm1d
     between an ``Unsqueeze`` and a ``Squeeze``, which the walk passes through. Any ``epsilon``
     is accepted (the mxnet models use 2e-5) and folded into the variance for the port's 1e-5;
   * PReLU slopes are ``[C,1,1]`` initializers (torch unsqueezes the [C] weight to broadcast over
     NCHW), or [C] reached through Reshape/Unsqueeze nodes; the loader flattens them to [C];
   * ``torch.flatten`` -> ``Flatten`` (or ``Reshape``, with its shape sub-graph), the Linear ->
     ``Gemm`` (transB=1, weight [512, 25088]) or ``MatMul`` [+ ``Add``]; dropout is gone (or an
     ``Identity``/``Dropout`` node, skipped);
   * leading ``Sub``/``Mul``/``Add``/``Div`` nodes with constant operands (the mxnet-converted
     models normalise their own input). insightface (``model_zoo/arcface_onnx.py``) feeds raw
     RGB pixels when the graph has both a Sub and a Mul there, and ``(pixel - 127.5) / 127.5``
     otherwise; the loader turns that and the graph's own affine into
     ``IResNetConfig.input_scale/shift``, so the port always takes ``(pixel - 127.5) / 127.5``.

   A graph of another architecture (MobileFaceNet ``w600k_mbf``, a ResNet with ReLU, a detector)
   fails with a ``ValueError`` that names the first node that does not fit, as does a graph
   with nodes left over after the walk.

Public API: ``arcface_from_state_dict(sd)``, ``arcface_from_onnx(path_or_model)``,
``onnx_to_state_dict(path_or_model)``, ``load_arcface(path)`` (either file), ``parity_arcface``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.interop.expression_weights import batchnorm_entries as _bn
from gohd_jax.interop.expression_weights import copy_entries, strip_prefix
from gohd_jax.models.arcface import (BN_EPS, FC_GRID, INPUT_SIZE, WIDTHS, IResNet, IResNetConfig)

__all__ = ["arcface_from_state_dict", "arcface_from_onnx", "onnx_to_state_dict", "load_arcface",
           "layers_of", "load_state_dict", "parity_arcface", "OnnxWeights"]


# --------------------------------------------------------------------------------------------
# State dict -> IResNet
# --------------------------------------------------------------------------------------------

def _entries(model: IResNet) -> Iterator[tuple[str, Any, str]]:
    yield "conv1.weight", model.conv1.weight, "conv"
    yield from _bn("bn1", model.bn1)
    yield "prelu.weight", model.prelu.weight, "copy"
    for s, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4), start=1):
        for i, block in enumerate(stage):
            p = f"layer{s}.{i}"
            yield from _bn(f"{p}.bn1", block.bn1)
            yield f"{p}.conv1.weight", block.conv1.weight, "conv"
            yield from _bn(f"{p}.bn2", block.bn2)
            yield f"{p}.prelu.weight", block.prelu.weight, "copy"
            yield f"{p}.conv2.weight", block.conv2.weight, "conv"
            yield from _bn(f"{p}.bn3", block.bn3)
            if block.downsample is not None:
                yield f"{p}.downsample.0.weight", block.downsample[0].weight, "conv"
                yield from _bn(f"{p}.downsample.1", block.downsample[1])
    yield from _bn("bn2", model.bn2)
    yield "fc.weight", model.fc.kernel, "fc"
    yield "fc.bias", model.fc.bias, "copy"
    yield from _bn("features", model.features)


def _transform(arr: np.ndarray, how: str) -> np.ndarray:
    if how == "conv":
        return arr.transpose(2, 3, 1, 0)
    if how == "fc":  # [out, C*H*W] (torch flatten order) -> [H*W*C, out] (NHWC flatten order)
        out, n = arr.shape
        c = n // (FC_GRID * FC_GRID)
        if c * FC_GRID * FC_GRID != n:
            raise ValueError(f"fc.weight has {n} inputs, not a multiple of {FC_GRID}x{FC_GRID}")
        return arr.reshape(out, c, FC_GRID, FC_GRID).transpose(2, 3, 1, 0).reshape(n, out)
    return arr


def load_state_dict(model: IResNet, state_dict: Mapping[str, Any]) -> IResNet:
    """Copies an arcface_torch state dict into ``model`` in place (strict on names and shapes)."""
    return copy_entries(model, _entries(model), state_dict, _transform)


def layers_of(state_dict: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """Blocks per stage, read from the ``layer{s}.{i}.conv1.weight`` names."""
    sd = strip_prefix(state_dict)
    counts = []
    for s in range(1, 5):
        idx = {int(k.split(".")[1]) for k in sd
               if k.startswith(f"layer{s}.") and k.endswith(".conv1.weight")}
        if not idx:
            raise KeyError(f"state dict has no 'layer{s}.<i>.conv1.weight': not an arcface_torch "
                           f"iresnet (backbone.pth) state dict")
        if idx != set(range(len(idx))):
            raise KeyError(f"layer{s} block indices {sorted(idx)} are not 0..{len(idx) - 1}")
        counts.append(len(idx))
    return tuple(counts)


def arcface_from_state_dict(state_dict: Mapping[str, Any], *,
                            input_scale=(1.0, 1.0, 1.0), input_shift=(0.0, 0.0, 0.0),
                            param_dtype=jnp.float32) -> IResNet:
    """arcface_torch ``backbone.pth`` state dict (or the oracle's weights) -> ``IResNet``; the
    depth (r50 (3,4,14,3), r100 (3,13,30,3), ...) is read from the names; strict names/shapes.
    ``input_scale``/``input_shift``: see ``IResNetConfig`` (identity for backbone.pth)."""
    sd = strip_prefix(state_dict)
    if "fc.weight" not in sd:
        raise KeyError("state dict lacks 'fc.weight' (is this an arcface_torch backbone.pth?)")
    cfg = IResNetConfig(layers=layers_of(sd), num_features=int(np.shape(sd["fc.weight"])[0]),
                        input_scale=tuple(input_scale), input_shift=tuple(input_shift))
    # Built abstract (no init: every variable is then overwritten by the strict copy).
    model = nnx.eval_shape(lambda: IResNet(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype))
    load_state_dict(model, sd)
    abstract = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(
        nnx.state(model)) if isinstance(v, jax.ShapeDtypeStruct)]
    if abstract:
        raise RuntimeError(f"arcface converter left variables unset: {abstract[:4]}")
    return model


# --------------------------------------------------------------------------------------------
# ONNX graph -> state dict
# --------------------------------------------------------------------------------------------

class OnnxWeights(dict):
    """``onnx_to_state_dict``'s result: an arcface_torch state dict (name -> float32 array) with
    the input affine the graph implies (``input_scale``, ``input_shift``, per RGB channel, for
    inputs in [-1, 1]) and the graph's BatchNorm epsilons (``epsilons``, a sorted tuple)."""
    input_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    input_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    epsilons: tuple[float, ...] = ()


_SHAPE_OPS = ("Identity", "Dropout", "Unsqueeze", "Squeeze", "Reshape", "Flatten")
_AFFINE_OPS = ("Sub", "Add", "Mul", "Div")


class _Walk:
    """The data-flow walk over one ONNX graph (see the module docstring)."""

    def __init__(self, model, source: str):
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        g = model.graph
        self.source = source
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for t in n.input:
                if t:
                    self.consumers[t].append(i)
        self.outputs = [o.name for o in g.output]
        inputs = [v.name for v in g.input if v.name not in self.inits]
        if len(inputs) != 1:
            self.fail(f"expected one image input, the graph has {len(inputs)}: {inputs}")
        self.input = inputs[0]
        value = next(v for v in g.input if v.name == self.input)
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in value.type.tensor_type.shape.dim]
        if dims and (len(dims) != 4 or any(d is not None and d != want for d, want in
                                           zip(dims[1:], (3, INPUT_SIZE, INPUT_SIZE)))):
            self.fail(f"input {self.input!r} has shape {dims}, expected [N, 3, {INPUT_SIZE}, "
                      f"{INPUT_SIZE}]")
        self.used: set[int] = set()
        self.epsilons: set[float] = set()

    # ---- errors and node access
    def fail(self, msg: str, idx: int | None = None):
        where = ""
        if idx is not None:
            n = self.nodes[idx]
            where = f" at node #{idx} {n.op_type} {n.name!r}"
        raise ValueError(f"{self.source}: not an insightface/arcface_torch iresnet ONNX graph"
                         f"{where}: {msg}")

    def attrs(self, idx: int) -> dict[str, Any]:
        return {a.name: self._helper.get_attribute_value(a) for a in self.nodes[idx].attribute}

    def live_consumers(self, tensor: str) -> list[int]:
        return [i for i in self.consumers.get(tensor, []) if i not in self.used
                and self.nodes[i].op_type != "Shape"]

    def take(self, tensor: str, ops: tuple[str, ...], what: str) -> int:
        """The one unvisited consumer of ``tensor`` with an op in ``ops`` (marked used)."""
        cands = self.live_consumers(tensor)
        hits = [i for i in cands if self.nodes[i].op_type in ops]
        if len(hits) != 1:
            found = ", ".join(f"#{i} {self.nodes[i].op_type}" for i in cands) or "nothing"
            self.fail(f"expected {what} ({'/'.join(ops)}) reading {tensor!r}, found {found}")
        self.used.add(hits[0])
        return hits[0]

    def sole(self, tensor: str) -> int | None:
        """The only consumer of ``tensor``, if it has exactly one (not marked)."""
        cands = self.live_consumers(tensor)
        return cands[0] if len(cands) == 1 else None

    # ---- constants
    def is_const(self, name: str) -> bool:
        if name in self.inits:
            return True
        i = self.producer.get(name)
        if i is None:
            return False
        n = self.nodes[i]
        if n.op_type == "Constant":
            return True
        return n.op_type in _SHAPE_OPS + ("Cast",) and bool(n.input) and self.is_const(n.input[0])

    def const(self, name: str) -> np.ndarray:
        """The value of a constant tensor (initializer, Constant node, or a value-preserving op
        of one: shape ops only change the shape, which callers re-check by size). Marks the
        nodes used."""
        if name in self.inits:
            return np.asarray(self._numpy_helper.to_array(self.inits[name]))
        i = self.producer.get(name)
        if i is None:
            self.fail(f"tensor {name!r} is not a constant")
        n = self.nodes[i]
        self.used.add(i)
        if n.op_type == "Constant":
            a = self.attrs(i)
            if "value" not in a:
                self.fail("Constant node without a tensor 'value'", i)
            return np.asarray(self._numpy_helper.to_array(a["value"]))
        if n.op_type in _SHAPE_OPS + ("Cast",):
            for extra in n.input[1:]:  # shape / axes operands
                if extra and self.is_const(extra):
                    self.const(extra)
            return self.const(n.input[0])
        self.fail(f"tensor {name!r} is computed, not a constant", i)

    def vector(self, name: str, size: int, what: str, idx: int) -> np.ndarray:
        v = np.asarray(self.const(name), np.float64)
        if v.size != size:
            self.fail(f"{what} has {v.size} values ({list(v.shape)}), expected {size}", idx)
        return v.reshape(size)

    # ---- layers
    def batchnorm(self, idx: int, channels: int | None = None) -> dict[str, np.ndarray]:
        n = self.nodes[idx]
        if len(n.input) < 5:
            self.fail("BatchNormalization without its 4 parameter inputs", idx)
        c = channels if channels is not None else int(np.asarray(self.const(n.input[1])).size)
        eps = float(self.attrs(idx).get("epsilon", 1e-5))
        self.epsilons.add(eps)
        p = {k: self.vector(n.input[j], c, f"BatchNorm {k}", idx)
             for j, k in enumerate(("weight", "bias", "running_mean", "running_var"), start=1)}
        p["running_var"] = p["running_var"] + (eps - BN_EPS)  # the port's eps is 1e-5
        return p

    def conv(self, tensor: str, kernel: int, stride: int | None, cin: int, what: str
             ) -> tuple[np.ndarray, int, dict[str, np.ndarray], str]:
        """Conv (+ BatchNormalization) reading ``tensor`` -> (weight OIHW, stride, BN entries,
        output tensor)."""
        idx = self.take(tensor, ("Conv",), what)
        return self.conv_at(idx, kernel, stride, cin, what)

    def conv_at(self, idx: int, kernel: int, stride: int | None, cin: int, what: str):
        n = self.nodes[idx]
        self.used.add(idx)
        a = self.attrs(idx)
        w = np.asarray(self.const(n.input[1]), np.float32)
        pad = (kernel - 1) // 2
        if w.ndim != 4 or w.shape[1:] != (cin, kernel, kernel):
            self.fail(f"{what}: weight {list(w.shape)}, expected [out, {cin}, {kernel}, {kernel}]",
                      idx)
        strides = tuple(a.get("strides", (1, 1)))
        if (int(a.get("group", 1)) != 1 or tuple(a.get("dilations", (1, 1))) != (1, 1)
                or len(set(strides)) != 1 or (stride is not None and strides[0] != stride)
                or tuple(a.get("pads", (0,) * 4)) != (pad,) * 4
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            self.fail(f"{what}: conv attributes {a} (expected {kernel}x{kernel}, stride "
                      f"{stride if stride is not None else 'any'}, pad {pad}, group 1)", idx)
        cout = w.shape[0]
        bias = (self.vector(n.input[2], cout, f"{what} bias", idx) if len(n.input) > 2
                and n.input[2] else np.zeros(cout))
        out = n.output[0]
        nxt = self.sole(out)
        if nxt is not None and self.nodes[nxt].op_type == "BatchNormalization":
            self.used.add(nxt)
            bn = self.batchnorm(nxt, cout)
            bn["running_mean"] = bn["running_mean"] - bias
            out = self.nodes[nxt].output[0]
        else:  # fused: an identity BatchNorm that adds the conv's bias
            bn = {"weight": np.ones(cout), "bias": bias, "running_mean": np.zeros(cout),
                  "running_var": np.full(cout, 1.0 - BN_EPS)}
        return w, strides[0], bn, out

    def prelu(self, tensor: str, channels: int, what: str) -> tuple[np.ndarray, str]:
        idx = self.take(tensor, ("PRelu",), what)
        n = self.nodes[idx]
        return self.vector(n.input[1], channels, f"{what} slope", idx), n.output[0]

    def skip_shape_ops(self, tensor: str, ops=("Identity", "Dropout")) -> str:
        while True:
            i = self.sole(tensor)
            if i is None or self.nodes[i].op_type not in ops:
                return tensor
            self.used.add(i)
            for extra in self.nodes[i].input[1:]:
                if extra:
                    self.mark_subgraph(extra)
            tensor = self.nodes[i].output[0]

    def mark_subgraph(self, tensor: str) -> None:
        """Marks the nodes computing ``tensor`` (a shape operand) used, back to visited nodes."""
        i = self.producer.get(tensor)
        if i is None or i in self.used:
            return
        self.used.add(i)
        for t in self.nodes[i].input:
            if t:
                self.mark_subgraph(t)


def _input_affine(walk: _Walk) -> tuple[np.ndarray, np.ndarray, str]:
    """Leading constant Sub/Add/Mul/Div nodes -> the affine the port applies to x in [-1, 1]."""
    a, b = np.ones(3), np.zeros(3)
    ops: set[str] = set()
    cur = walk.input
    while True:
        i = walk.sole(cur)
        if i is None or walk.nodes[i].op_type not in _AFFINE_OPS:
            break
        n = walk.nodes[i]
        if len(n.input) != 2 or n.input[0] != cur or not walk.is_const(n.input[1]):
            break
        walk.used.add(i)
        c = np.asarray(walk.const(n.input[1]), np.float64).ravel()
        if c.size not in (1, 3):
            walk.fail(f"input normalisation constant of {c.size} values (expected 1 or 3)", i)
        op = n.op_type
        ops.add(op)
        if op == "Sub":
            b = b - c
        elif op == "Add":
            b = b + c
        elif op == "Mul":
            a, b = a * c, b * c
        else:
            a, b = a / c, b / c
        cur = n.output[0]
    # insightface feeds raw pixels (mean 0, std 1) to a graph with Sub and Mul in front, else
    # (pixel - 127.5) / 127.5 = x. Raw pixels from x: 127.5 x + 127.5.
    if {"Sub", "Mul"} <= ops:
        a, b = a * 127.5, a * 127.5 + b
    return a, b, cur


def onnx_to_state_dict(model_or_path) -> OnnxWeights:
    """An insightface iresnet ONNX model (path or ``onnx.ModelProto``) -> arcface_torch state
    dict (``OnnxWeights``, with the input affine). Raises ``ValueError`` for other graphs."""
    import onnx

    if isinstance(model_or_path, (str, Path)):
        source = str(model_or_path)
        model = onnx.load(source)
    else:
        model, source = model_or_path, "ONNX model"
    w = _Walk(model, source)
    sd = OnnxWeights()

    def put_bn(prefix: str, bn: Mapping[str, np.ndarray]) -> None:
        for k, v in bn.items():
            sd[f"{prefix}.{k}"] = np.asarray(v, np.float32)

    scale, shift, cur = _input_affine(w)
    weight, _, bn, cur = w.conv(cur, 3, 1, 3, "the stem conv")
    if weight.shape[0] != WIDTHS[0]:
        w.fail(f"the stem conv has {weight.shape[0]} outputs, expected {WIDTHS[0]}")
    sd["conv1.weight"] = weight
    put_bn("bn1", bn)
    slope, cur = w.prelu(cur, WIDTHS[0], "the stem PReLU")
    sd["prelu.weight"] = np.asarray(slope, np.float32)

    blocks: list[tuple[int, int, bool]] = []  # (planes, stride, downsample)
    raw_blocks: list[dict[str, Any]] = []
    cin = WIDTHS[0]
    while True:
        bn_idx = w.take(cur, ("BatchNormalization",), "a block's bn1 or the head's bn2")
        bn_out = w.nodes[bn_idx].output[0]
        nxt = w.sole(bn_out)
        if nxt is None or w.nodes[nxt].op_type != "Conv":
            break
        # IBasicBlock: bn1 -> conv1 (+bn2) -> prelu -> conv2 (+bn3), + identity or downsample.
        x, p = cur, f"block{len(blocks)}"
        bn1 = w.batchnorm(bn_idx, cin)
        c1, _, bn2, t = w.conv_at(nxt, 3, 1, cin, f"{p} conv1")
        planes = c1.shape[0]
        slope, t = w.prelu(t, planes, f"{p} PReLU")
        c2, stride, bn3, t = w.conv(t, 3, None, planes, f"{p} conv2")
        if c2.shape[0] != planes:
            w.fail(f"{p} conv2 has {c2.shape[0]} outputs, conv1 {planes}")
        add = w.take(t, ("Add",), f"{p}'s residual Add")
        ins = list(w.nodes[add].input)
        if t not in ins or len(ins) != 2:
            w.fail(f"{p}: residual Add inputs {ins}", add)
        other = ins[1 - ins.index(t)]
        ds = None
        if other != x:  # projected skip: Conv (+BN) of the block input
            j = w.producer.get(other)
            if j is not None and w.nodes[j].op_type == "BatchNormalization":
                j = w.producer.get(w.nodes[j].input[0])
            if j is None or w.nodes[j].op_type != "Conv" or w.nodes[j].input[0] != x:
                w.fail(f"{p}: the residual's second input {other!r} is neither the block input "
                       f"nor a 1x1 conv of it", add)
            ds = w.conv_at(j, 1, stride, cin, f"{p} downsample")
            if ds[0].shape[0] != planes or ds[3] != other:
                w.fail(f"{p}: downsample does not match the block ({ds[0].shape[0]} outputs)", j)
        elif stride != 1 or planes != cin:
            w.fail(f"{p}: stride {stride} / {cin}->{planes} channels without a downsample", add)
        blocks.append((planes, stride, ds is not None))
        raw_blocks.append({"bn1": bn1, "conv1": c1, "bn2": bn2, "prelu": slope, "conv2": c2,
                           "bn3": bn3, "ds": ds})
        cin, cur = planes, w.nodes[add].output[0]

    # Stages: each starts with a stride-2 block with a downsample; widths 64, 128, 256, 512.
    stages: list[list[int]] = []
    for k, (planes, stride, has_ds) in enumerate(blocks):
        if has_ds:
            stages.append([])
        elif not stages:
            w.fail(f"block {k} has no downsample, but the first block of a stage must")
        stages[-1].append(k)
    if len(stages) != 4:
        w.fail(f"{len(stages)} stages (counted by their downsampling blocks), expected 4")
    for s, ks in enumerate(stages):
        for n_in_stage, k in enumerate(ks):
            planes, stride, _ = blocks[k]
            want_stride = 2 if n_in_stage == 0 else 1
            if planes != WIDTHS[s] or stride != want_stride:
                w.fail(f"stage {s + 1} block {n_in_stage}: {planes} channels stride {stride}, "
                       f"expected {WIDTHS[s]} stride {want_stride}")
            blk, p = raw_blocks[k], f"layer{s + 1}.{n_in_stage}"
            put_bn(f"{p}.bn1", blk["bn1"])
            sd[f"{p}.conv1.weight"] = blk["conv1"]
            put_bn(f"{p}.bn2", blk["bn2"])
            sd[f"{p}.prelu.weight"] = np.asarray(blk["prelu"], np.float32)
            sd[f"{p}.conv2.weight"] = blk["conv2"]
            put_bn(f"{p}.bn3", blk["bn3"])
            if blk["ds"] is not None:
                sd[f"{p}.downsample.0.weight"] = blk["ds"][0]
                put_bn(f"{p}.downsample.1", blk["ds"][2])

    # Head: bn2 -> (dropout) -> flatten -> Gemm / MatMul (+Add) -> (Unsqueeze) BN (Squeeze).
    put_bn("bn2", w.batchnorm(bn_idx, WIDTHS[-1]))
    cur = w.skip_shape_ops(w.nodes[bn_idx].output[0])
    flat = w.take(cur, ("Flatten", "Reshape"), "the flatten before fc")
    fa = w.attrs(flat)
    if w.nodes[flat].op_type == "Flatten" and int(fa.get("axis", 1)) != 1:
        w.fail(f"Flatten axis {fa.get('axis')}, expected 1", flat)
    for extra in w.nodes[flat].input[1:]:
        w.mark_subgraph(extra)
    cur = w.skip_shape_ops(w.nodes[flat].output[0])
    n_in = WIDTHS[-1] * FC_GRID * FC_GRID
    fc = w.take(cur, ("Gemm", "MatMul"), "the fc layer")
    fn = w.nodes[fc]
    B = np.asarray(w.const(fn.input[1]), np.float64)
    if fn.op_type == "Gemm":
        ga = w.attrs(fc)
        if int(ga.get("transA", 0)):
            w.fail("Gemm with transA=1", fc)
        weight = B if int(ga.get("transB", 0)) else B.T
        weight = weight * float(ga.get("alpha", 1.0))
        n_out = weight.shape[0] if weight.ndim == 2 else -1
        bias = (w.vector(fn.input[2], n_out, "fc bias", fc) * float(ga.get("beta", 1.0))
                if len(fn.input) > 2 and fn.input[2] else np.zeros(max(n_out, 0)))
        cur = fn.output[0]
    else:
        weight = B.T
        n_out = weight.shape[0] if weight.ndim == 2 else -1
        cur = fn.output[0]
        nxt = w.sole(cur)
        if nxt is not None and w.nodes[nxt].op_type == "Add":
            ins = list(w.nodes[nxt].input)
            other = ins[1 - ins.index(cur)]
            w.used.add(nxt)
            bias = w.vector(other, n_out, "fc bias", nxt)
            cur = w.nodes[nxt].output[0]
        else:
            bias = np.zeros(max(n_out, 0))
    if weight.ndim != 2 or weight.shape[1] != n_in:
        w.fail(f"fc weight {list(weight.shape)} (as [out, in]), expected [*, {n_in}]", fc)
    sd["fc.weight"], sd["fc.bias"] = weight.astype(np.float32), bias.astype(np.float32)
    cur = w.skip_shape_ops(cur, _SHAPE_OPS)
    nxt = w.sole(cur)
    if nxt is not None and w.nodes[nxt].op_type == "BatchNormalization":
        w.used.add(nxt)
        feats = w.batchnorm(nxt, n_out)
        cur = w.skip_shape_ops(w.nodes[nxt].output[0], _SHAPE_OPS)
    else:  # no features BatchNorm in the graph: an identity one
        feats = {"weight": np.ones(n_out), "bias": np.zeros(n_out),
                 "running_mean": np.zeros(n_out), "running_var": np.full(n_out, 1.0 - BN_EPS)}
    put_bn("features", feats)
    if cur not in w.outputs:
        w.fail(f"the embedding {cur!r} is not the graph's output ({w.outputs}); "
               f"nodes follow: {[w.nodes[i].op_type for i in w.live_consumers(cur)]}")
    left = [i for i, n in enumerate(w.nodes) if i not in w.used
            and not (n.op_type == "Constant" and all(not w.consumers.get(o) for o in n.output))]
    left = [i for i in left if w.nodes[i].op_type != "Shape"
            or any(w.consumers.get(o) for o in w.nodes[i].output if o)] if left else left
    if left:
        w.fail("nodes outside the iresnet pattern: " + ", ".join(
            f"#{i} {w.nodes[i].op_type} {w.nodes[i].name!r}" for i in left[:8])
               + (" ..." if len(left) > 8 else ""))
    sd.input_scale = tuple(float(v) for v in scale)
    sd.input_shift = tuple(float(v) for v in shift)
    sd.epsilons = tuple(sorted(w.epsilons))
    return sd


def arcface_from_onnx(model_or_path, param_dtype=jnp.float32) -> IResNet:
    """insightface's ``w600k_r50.onnx`` / ``glintr100.onnx`` (path or ``onnx.ModelProto``) ->
    ``IResNet`` taking ``(pixel - 127.5) / 127.5`` RGB faces, like the state-dict path."""
    sd = onnx_to_state_dict(model_or_path)
    return arcface_from_state_dict(sd, input_scale=sd.input_scale, input_shift=sd.input_shift,
                                   param_dtype=param_dtype)


def _is_torch_file(path: Path) -> bool:
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:1] == b"\x80"  # a pickle (legacy torch.save)


def load_arcface(path: str | Path) -> IResNet:
    """Either file users hold -> ``IResNet``: arcface_torch ``backbone.pth`` (read torch-free) or
    insightface's ``.onnx`` (``w600k_r50.onnx``, ``glintr100.onnx``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ArcFace weight file (backbone.pth or .onnx)")
    if path.suffix.lower() != ".onnx" and _is_torch_file(path):
        from gohd_jax.interop.torch_checkpoint import load_torch_checkpoint

        sd = load_torch_checkpoint(path)
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping):
            raise ValueError(f"{path}: expected a state dict (arcface_torch backbone.pth)")
        return arcface_from_state_dict(sd)
    return arcface_from_onnx(path)


# --------------------------------------------------------------------------------------------
# gohd-parity
# --------------------------------------------------------------------------------------------

def _nchw(x: jax.Array) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def parity_arcface(io, state_dict, fp64_ref=None):
    """The ``arcface`` oracle: ``img_input`` [B,3,112,112] in [-1,1] -> ``layer{1-4}_out``,
    ``bn2_out`` (NCHW), ``fc_out``, ``embedding`` [B,512], ``csim`` [B-1] (cosine of embedding 0
    with each other one)."""
    if state_dict is None:
        raise ValueError("the arcface oracle needs its weights (manifest.json)")
    model = arcface_from_state_dict(state_dict)
    x = np.asarray(io["img_input"], np.float32)
    if x.ndim != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"img_input must be [B,3,{INPUT_SIZE},{INPUT_SIZE}], got {list(x.shape)}")
    out = nnx.jit(lambda m, v: m.intermediates(v))(model, jnp.asarray(x.transpose(0, 2, 3, 1)))
    res = {k: (_nchw(v) if v.ndim == 4 else np.asarray(v)) for k, v in out.items()}
    emb = res["embedding"].astype(np.float64)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    res["csim"] = (unit[1:] @ unit[0]).astype(np.float32)
    return res
