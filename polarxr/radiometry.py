"""What a scene's pixel values mean: units, data type, polarisations and DN scaling.

A model only fits data whose values mean what its training data's did: the same bands, in the same units
(``dn`` of an 8-bit rendering, ``linear`` or ``dB`` sigma0), data type, polarisations (from the product
name) and DN scaling (the 8-bit rendering's ``DB_MIN``/``DB_MAX`` band tags). These are recorded in the
training cube and the checkpoint, and compared at inference and when training resumes.
"""

from __future__ import annotations

import xarray as xr

#: The fields compared, in the order problems are listed.
FIELDS = ("units", "dtype", "polarisation", "scaling")


def radiometry(scene: xr.DataArray) -> dict:
    """``{"units", "dtype", "polarisation", "scaling"}`` of an opened scene (None where unknown)."""
    return {"units": scene.attrs.get("units"), "dtype": str(scene.dtype),
            "polarisation": scene.attrs.get("polarisation"), "scaling": scene.attrs.get("scaling") or None}


def differences(expected: dict | None, actual: dict) -> list[str]:
    """What differs between two radiometry records; a field unknown on either side is not compared."""
    if not expected:
        return []
    problems = []
    for name in FIELDS:
        want, have = expected.get(name), actual.get(name)
        if want is not None and have is not None and want != have:
            problems.append(f"{name} {_show(have)}, trained on {_show(want)}")
    return problems


def _show(value) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{band} " + ", ".join(f"{k}={v}" for k, v in tags.items()) for band, tags in value.items())
    return str(value)
