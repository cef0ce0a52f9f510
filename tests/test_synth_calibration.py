"""The calibrated 8-bit rendering of the synthetic generator: DN curves, speckle filter, domain randomisation."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from polarxr.errors import PolarxrError
from polarxr.synthetic import DN_CURVES, RANDOMISATION, _to_dn, make_scene


def _lag1(band: np.ndarray) -> float:
    valid = (band[:, :-1] > 0) & (band[:, 1:] > 0)
    a, b = band[:, :-1][valid].astype(float), band[:, 1:][valid].astype(float)
    return float(np.corrcoef(a, b)[0, 1])


def test_calibrated_rendering_is_speckle_filtered_and_randomised(tmp_path):
    linear = make_scene(tmp_path / "lin", seed=4, size=(256, 256))
    calibrated = make_scene(tmp_path / "cal", seed=4, size=(256, 256), rendering="calibrated")
    with rasterio.open(linear.scene) as a, rasterio.open(calibrated.scene) as b:
        lin, cal, tags = a.read(), b.read(), b.tags()
        assert a.tags()["RENDERING"] == "linear" and "GAIN_DB" not in a.tags()
        assert "interp" in tags["DN_SCALING"] and b.tags(1)["DN_CURVE_DN"].startswith("5,")
    assert ((lin == 0).all(axis=0) == (cal == 0).all(axis=0)).all()  # same swath, same nodata
    # the real products are speckle filtered: neighbours correlate at about 0.95 there
    assert _lag1(cal[0]) > 0.8 > _lag1(lin[0])
    for key, (lo, hi) in RANDOMISATION.items():
        name = {"gain_db": "GAIN_DB", "looks": "LOOKS", "slope_scale": "SLOPE_SCALE", "filter_px": "SPECKLE_FILTER_PX"}[key]
        assert lo <= float(tags[name]) <= hi
    with pytest.raises(PolarxrError, match="unknown rendering 'pretty'"):
        make_scene(tmp_path / "x", seed=1, size=(64, 64), rendering="pretty")


def test_dn_curves_are_monotone_and_hit_their_knots():
    for band, (db, dn) in DN_CURVES.items():
        assert np.all(np.diff(db) > 0) and np.all(np.diff(dn) >= 0) and 1 <= min(dn) and max(dn) <= 255
        values = _to_dn(np.asarray(db, np.float32), band, "calibrated")
        np.testing.assert_array_equal(values, np.clip(np.rint(dn), 1, 255))
    assert _to_dn(np.array([np.nan, -99.0], np.float32), "HH", "calibrated").tolist() == [0, DN_CURVES["HH"][1][0]]
