"""ArcFace iresnet (CSIM): oracle parity, the backbone.pth / ONNX converters, 5-point alignment,
embedding and cosine similarity."""

from __future__ import annotations

import io as _io
import json

import jax
import numpy as np
import pytest

from gohd_jax.eval import csim as cs
from gohd_jax.interop import arcface_weights as aw
from gohd_jax.interop import oracle_weights as ow
from gohd_jax.interop import parity
from tests.conftest import require_shared

SMALL = (1, 1, 1, 1)  # a truncated r100: the first block of each stage (all shapes as in r100)
HEAD = 32  # ... and the first 32 of its 512 embedding features (keeps the ONNX files small)


@pytest.fixture(scope="module")
def manifest():
    return ow.load_manifest(require_shared("reference", "arcface", "manifest.json"))


@pytest.fixture(scope="module")
def manifest_sd(manifest):
    """The manifest's names and shapes (values zero: the strictness test needs no more)."""
    return {t["name"]: np.zeros(t["shape"], t["dtype"]) for t in manifest["tensors"]}


def _dropped(name, layers):
    return name.startswith("layer") and int(name.split(".")[1]) >= layers[int(name[5]) - 1]


def _truncate(sd, layers=SMALL, head=None):
    """The state dict of an iresnet with ``layers`` blocks per stage (and the first ``head``
    embedding features), taken from a bigger one."""
    keep = {}
    for k, v in sd.items():
        if _dropped(k, layers):
            continue
        if head is not None and k.startswith(("fc.", "features.")) and v.ndim:
            v = v[:head]
        keep[k] = v
    return keep


@pytest.fixture(scope="module")
def small_sd(manifest):
    """The oracle's own weights of the truncated r100 (the manifest's rule, generated only for
    the tensors kept: the others get shape [0], which keeps every tensor's index)."""
    man = {**manifest, "tensors": [{**t, "shape": [0]} if _dropped(t["name"], SMALL) else t
                                   for t in manifest["tensors"]]}
    return _truncate(ow.make_state_dict(man, ow.manifest_seed(manifest)), SMALL, HEAD)


@pytest.fixture(scope="module")
def small_model(small_sd):
    return aw.arcface_from_state_dict(small_sd)


def _faces(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# The oracle and the state-dict converter
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_parity():
    out, err = _io.StringIO(), _io.StringIO()
    status = parity.check_folder(require_shared("reference", "arcface"), out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert status == parity.EXIT_OK, err.getvalue()
    assert {d["array"] for d in lines} == {"layer1_out", "layer2_out", "layer3_out", "layer4_out",
                                           "bn2_out", "fc_out", "embedding", "csim"}
    assert all(d["max_rel"] < 1e-4 for d in lines)


def test_converter_is_strict_on_the_manifest_names(manifest_sd, small_sd):
    model = aw.arcface_from_state_dict(manifest_sd)
    assert model.config.layers == (3, 13, 30, 3) and model.config.name == "r100"
    # fc: torch's (C, H, W) flatten order -> the port's (H, W, C) order.
    w = manifest_sd["fc.weight"]
    k = np.asarray(model.fc.kernel[...])
    np.testing.assert_array_equal(k[(2 * 7 + 3) * 512 + 5], w[:, 5 * 49 + 2 * 7 + 3])
    np.testing.assert_array_equal(np.asarray(model.layer3[29].conv2.weight[...]),
                                  manifest_sd["layer3.29.conv2.weight"].transpose(2, 3, 1, 0))
    # Strictness (on the truncated r100, same code, faster).
    with pytest.raises(KeyError, match="unused state-dict entries"):
        aw.arcface_from_state_dict({**small_sd, "extra.weight": np.zeros(3, np.float32)})
    sd = dict(small_sd)
    del sd["layer2.0.prelu.weight"]
    with pytest.raises(KeyError, match="lacks 'layer2.0.prelu.weight'"):
        aw.arcface_from_state_dict(sd)
    sd = {**small_sd, "layer1.0.bn1.running_var": np.ones(32, np.float32)}
    with pytest.raises(ValueError, match="layer1.0.bn1.running_var"):
        aw.arcface_from_state_dict(sd)
    assert aw.layers_of(_truncate(manifest_sd, (3, 4, 14, 3))) == (3, 4, 14, 3)  # r50 names


def test_load_arcface_reads_a_backbone_pth(small_sd, small_model, tmp_path):
    from flax import nnx

    from tests.test_torch_checkpoint import state_dict, tensor, torch_save_zip

    path = tmp_path / "backbone.pth"
    path.write_bytes(torch_save_zip(state_dict(**{k: tensor(v) for k, v in small_sd.items()})))
    model = aw.load_arcface(path)
    assert model.config == small_model.config
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(nnx.state(model)), leaves(nnx.state(small_model)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError):
        aw.load_arcface(tmp_path / "missing.onnx")


# ----------------------------------------------------------------------------------------------
# ONNX: a graph with the structure of insightface's exported iresnets
# ----------------------------------------------------------------------------------------------

def _export_like(sd, *, mxnet=False, mul=1 / 127.5, eps=1e-5, opset=11):
    """An ONNX model of the iresnet in ``sd`` shaped like insightface's graphs.

    Default: what ``torch.onnx.export`` (eval, constant folding; torch2onnx.py) makes of
    arcface_torch: Conv+BN fused into biased Convs with numeric initializer names, the blocks'
    bn1 / head bn2 / features kept as BatchNormalization under their torch names, PReLU slopes
    [C,1,1], Flatten -> Gemm(transB=1), features BatchNorm1d between Unsqueeze and Squeeze.
    ``mxnet=True``: the mxnet-converted layout: leading Sub 127.5 / Mul ``mul`` nodes, unfused
    Conv -> BatchNormalization (epsilon ``eps``), [C] slopes through a Reshape, a 2-D features BN.
    ``opset`` >= 13 gives Unsqueeze/Squeeze their axes as an input (torch2onnx.py uses 11).
    BatchNormalization gets no ``momentum`` (torch writes 0.9; ``onnx.reference`` before opset
    14 then runs it in training mode, unlike any runtime; the loader ignores it).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = aw.layers_of(sd)
    inits, nodes = [], []
    counter = iter(range(685, 100000))

    def init(arr, name=None):
        name = name or str(next(counter))
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def node(op, inputs, **attrs):
        out = str(next(counter))
        nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{len(nodes)}", **attrs))
        return out

    def bn(x, prefix, named=True):
        names = [init(sd[f"{prefix}.{k}"], f"{prefix}.{k}" if named else None)
                 for k in ("weight", "bias", "running_mean", "running_var")]
        return node("BatchNormalization", [x] + names, epsilon=eps)

    def conv_bn(x, conv, prefix_bn, stride, pad):
        w = sd[conv].astype(np.float64)
        k = w.shape[-1]
        attrs = dict(dilations=[1, 1], group=1, kernel_shape=[k, k], pads=[pad] * 4,
                     strides=[stride, stride])
        if mxnet:
            return bn(node("Conv", [x, init(w)], **attrs), prefix_bn, named=False)
        g = sd[f"{prefix_bn}.weight"] / np.sqrt(sd[f"{prefix_bn}.running_var"].astype(np.float64)
                                                + 1e-5)
        b = sd[f"{prefix_bn}.bias"] - sd[f"{prefix_bn}.running_mean"] * g
        return node("Conv", [x, init(w * g[:, None, None, None]), init(b)], **attrs)

    def prelu(x, name):
        s = sd[name]
        if mxnet:
            inits.append(numpy_helper.from_array(np.array([-1, 1, 1], np.int64), f"{name}_shape"))
            return node("PRelu", [x, node("Reshape", [init(s), f"{name}_shape"])])
        return node("PRelu", [x, init(s.reshape(-1, 1, 1))])

    x = "input.1"
    if mxnet:
        x = node("Sub", [x, init(np.array(127.5))])
        x = node("Mul", [x, init(np.array(mul))])
    x = prelu(conv_bn(x, "conv1.weight", "bn1", 1, 1), "prelu.weight")
    for s, n in enumerate(layers, start=1):
        for i in range(n):
            p, stride = f"layer{s}.{i}", 2 if i == 0 else 1
            t = bn(x, f"{p}.bn1", named=not mxnet)
            t = prelu(conv_bn(t, f"{p}.conv1.weight", f"{p}.bn2", 1, 1), f"{p}.prelu.weight")
            t = conv_bn(t, f"{p}.conv2.weight", f"{p}.bn3", stride, 1)
            skip = (conv_bn(x, f"{p}.downsample.0.weight", f"{p}.downsample.1", stride, 0)
                    if i == 0 else x)
            x = node("Add", [t, skip])
    x = bn(x, "bn2", named=not mxnet)
    x = node("Flatten", [x], axis=1)
    x = node("Gemm", [x, init(sd["fc.weight"], "fc.weight"), init(sd["fc.bias"], "fc.bias")],
             alpha=1.0, beta=1.0, transB=1)
    if mxnet:
        x = bn(x, "features", named=False)
    else:
        if opset >= 13:
            inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes_2"))
            x = node("Squeeze", [bn(node("Unsqueeze", [x, "axes_2"]), "features"), "axes_2"])
        else:
            x = node("Squeeze", [bn(node("Unsqueeze", [x], axes=[2]), "features")], axes=[2])
    graph = helper.make_graph(
        nodes, "iresnet", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                         ["None", 3, 112, 112])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["None", sd["fc.bias"].size])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def _embed_both(a, b, faces):
    return cs.embed(a, faces, batch_size=2), cs.embed(b, faces, batch_size=2)


def test_onnx_export_layout_round_trip(small_sd, small_model, tmp_path):
    import onnx

    path = tmp_path / "w600k_like.onnx"
    onnx.save(_export_like(small_sd), str(path))
    sd = aw.onnx_to_state_dict(str(path))
    assert set(sd) == {k for k in small_sd if not k.endswith("num_batches_tracked")}
    for k in ("layer2.0.bn1.running_var", "fc.weight", "features.bias", "layer4.0.prelu.weight",
              "bn2.weight"):  # the unfused ones (convs carry their BatchNorm, fused)
        np.testing.assert_allclose(sd[k], small_sd[k], rtol=1e-6, err_msg=k)
    assert sd.input_scale == (1.0, 1.0, 1.0) and sd.input_shift == (0.0, 0.0, 0.0)
    model = aw.load_arcface(path)
    assert model.config.layers == SMALL
    got, want = _embed_both(model, small_model, _faces())
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_onnx_mxnet_layout_input_normalisation_and_eps(small_sd):
    # eps 2e-5 in the graph: make the same function as small_sd's eps-1e-5 BatchNorms.
    sd = {k: (v - np.float32(1e-5) if k.endswith("running_var") else v) for k, v in small_sd.items()}
    got = aw.onnx_to_state_dict(_export_like(sd, mxnet=True, eps=2e-5))
    np.testing.assert_allclose(got.input_scale, 1.0, rtol=1e-6)
    np.testing.assert_allclose(got.input_shift, 0.0, atol=1e-6)
    assert set(got) == {k for k in small_sd if not k.endswith("num_batches_tracked")}
    for k, v in got.items():  # unfused: every tensor as in the state dict (eps 2e-5 -> 1e-5)
        np.testing.assert_allclose(v, small_sd[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # mxnet's own constants: (pixel - 127.5) * 0.0078125 = x * 127.5 / 128.
    w = aw.onnx_to_state_dict(_export_like(sd, mxnet=True, mul=0.0078125, eps=2e-5))
    np.testing.assert_allclose(w.input_scale, 127.5 / 128, rtol=1e-7)
    assert w.epsilons == (pytest.approx(2e-5),)


@pytest.mark.slow
@pytest.mark.parametrize("mxnet", [False, True])
def test_onnx_graph_runs_like_the_port(small_sd, mxnet):
    """The test graphs themselves, run by ``onnx.reference`` (as insightface feeds them: raw RGB
    pixels to the Sub/Mul graph, (pixel - 127.5) / 127.5 otherwise), equal the port built from
    them: checks ``_export_like`` (NCHW flatten, Gemm transB) and the loader's input affine."""
    from onnx.reference import ReferenceEvaluator

    model = _export_like(small_sd, mxnet=mxnet, mul=0.0078125, opset=15)
    faces = _faces()
    x = faces.astype(np.float32).transpose(0, 3, 1, 2)
    x = x if mxnet else (x - 127.5) / 127.5
    want = ReferenceEvaluator(model).run(None, {"input.1": x})[0]
    got = cs.embed(aw.arcface_from_onnx(model), faces, batch_size=2)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_onnx_graph_of_another_architecture_is_refused(small_sd):
    from onnx import helper

    model = _export_like(small_sd)
    nodes = list(model.graph.node)
    k = next(i for i, n in enumerate(nodes) if n.op_type == "PRelu")
    nodes[k] = helper.make_node("Relu", [nodes[k].input[0]], list(nodes[k].output), name="Relu_x")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    with pytest.raises(ValueError, match="not an insightface.*PRelu"):
        aw.onnx_to_state_dict(model)


# ----------------------------------------------------------------------------------------------
# Alignment, embedding, CSIM
# ----------------------------------------------------------------------------------------------

def _similarity(angle, scale, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1.0]])


def test_similarity_transform_is_umeyama():
    tmpl = cs.ARCFACE_TEMPLATE_112.astype(np.float64)
    t = _similarity(0.3, 2.7, 140.0, 95.0)
    src = (np.c_[tmpl, np.ones(5)] @ np.linalg.inv(t).T)[:, :2]  # image points of the template
    np.testing.assert_allclose(cs.similarity_transform(src, tmpl), t, atol=1e-9)
    # Noisy points: the least-squares similarity is the complex fit z_dst = a z_src + b.
    rng = np.random.default_rng(1)
    noisy = src + rng.normal(0, 2.0, src.shape)
    zs, zd = noisy @ [1, 1j], tmpl @ [1, 1j]
    a = np.vdot(zs - zs.mean(), zd - zd.mean()) / np.vdot(zs - zs.mean(), zs - zs.mean())
    b = zd.mean() - a * zs.mean()
    m = cs.similarity_transform(noisy, tmpl)
    np.testing.assert_allclose(m[:2], [[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]],
                               atol=1e-9)


def test_align_face_maps_the_points_onto_the_template():
    tmpl = cs.ARCFACE_TEMPLATE_112.astype(np.float64)
    t = _similarity(-0.4, 2.2, 60.0, 150.0)  # crop -> image: the face is 2.2x larger, rotated
    pts = (np.c_[tmpl, np.ones(5)] @ t.T)[:, :2]
    m = cs.alignment_matrix(pts)
    np.testing.assert_allclose(np.c_[pts, np.ones(5)] @ m.T, tmpl, atol=1e-9)
    # A linear ramp image: bilinear sampling of it is exact, so each crop pixel equals the ramp
    # at its source position (to the rounding of the image and the crop), 0 outside the image.
    h, w = 260, 300
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = np.stack([0.5 * xx + 0.2 * yy + 10, 0.3 * xx + 0.1 * yy, 250 - 0.6 * yy], -1)
    img = np.clip(np.rint(ramp), 0, 255).astype(np.uint8)
    face = cs.align_face(img, pts)
    assert face.shape == (112, 112, 3) and face.dtype == np.uint8
    v, u = np.mgrid[0:112, 0:112].astype(np.float64)
    src = np.stack([u, v, np.ones_like(u)], -1) @ t.T  # crop pixel -> image position
    sx, sy = src[..., 0], src[..., 1]
    expect = np.stack([0.5 * sx + 0.2 * sy + 10, 0.3 * sx + 0.1 * sy, 250 - 0.6 * sy], -1)
    inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    outside = (sx < -1) | (sx > w) | (sy < -1) | (sy > h)
    assert inside.sum() > 5000 and outside.sum() > 500
    assert np.abs(face[inside] - expect[inside]).max() <= 1.0
    assert (face[outside] == 0).all()


def test_five_points_from_68():
    lm = np.random.default_rng(0).uniform(0, 200, (3, 68, 2))
    five = cs.five_points_from_68(lm)
    assert five.shape == (3, 5, 2)
    np.testing.assert_allclose(five[:, 0], lm[:, 36:42].mean(1))
    np.testing.assert_allclose(five[:, 1], lm[:, 42:48].mean(1))
    np.testing.assert_array_equal(five[:, 2:], lm[:, [30, 48, 54]])


def test_embed_pads_batches_and_csim_of_a_face_with_itself_is_one(small_model):
    faces = _faces(3, seed=5)
    emb = cs.embed(small_model, faces, batch_size=2)  # 2 + 1 (padded)
    assert emb.shape == (3, HEAD) and emb.dtype == np.float32
    alone = cs.embed(small_model, faces[2:], batch_size=2)
    np.testing.assert_allclose(alone[0], emb[2], rtol=1e-5, atol=1e-5 * np.abs(emb).max())
    per_frame, mean = cs.csim(emb[0], np.stack([emb[0], emb[1], emb[0]]))
    np.testing.assert_allclose(per_frame[[0, 2]], 1.0, atol=1e-6)
    assert abs(per_frame[1]) < 0.999 and mean == pytest.approx(per_frame.mean())
