"""The descriptor estimators (Deep3DFaceRecon's regressor, L2CS-Net): parity and weight loading."""

from __future__ import annotations

import io as _io
import json

import numpy as np
import pytest

from gohd_jax.interop import estimator_weights as esw
from gohd_jax.interop import oracle_weights as ow
from gohd_jax.interop import parity
from tests.conftest import require_shared


def _state_dict(kind: str):
    man = ow.load_manifest(require_shared("reference", kind, "manifest.json"))
    return ow.make_state_dict(man, ow.manifest_seed(man))


@pytest.mark.parametrize("kind,arrays", [
    ("deep3d_recon", {"coeff", "backbone_feat", "exp", "pose"}),
    ("l2cs", {"logits_fc_yaw_gaze", "logits_fc_pitch_gaze", "gaze0", "decode_test_gaze0"}),
])
def test_parity(kind, arrays):
    out, err = _io.StringIO(), _io.StringIO()
    status = parity.check_folder(require_shared("reference", kind), out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert status == parity.EXIT_OK, err.getvalue()
    assert {d["array"] for d in lines} == arrays and all(d["max_rel"] < 1e-4 for d in lines)


def test_l2cs_loads_with_module_prefix_and_rejects_a_deep3d_state_dict():
    sd = _state_dict("l2cs")
    model = esw.l2cs_from_state_dict({f"module.{k}": v for k, v in sd.items()})
    np.testing.assert_array_equal(np.asarray(model.fc_yaw_gaze.kernel[...]), sd["fc_yaw_gaze.weight"].T)
    with pytest.raises(KeyError, match="lacks 'backbone.conv1.weight'"):
        esw.deep3d_from_state_dict(sd)  # an L2CS state dict is not a Deep3D one
    with pytest.raises(KeyError, match="unused state-dict entries"):
        esw.l2cs_from_state_dict({**sd, "extra.weight": np.zeros(3, np.float32)})
