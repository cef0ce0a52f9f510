"""Sentinel-1 GRD products as delivered: a ``.SAFE`` folder or the same as ``.zip``, read in place.

:func:`open_product` checks the product (manifest, the annotation / calibration / noise XML of every
polarisation, the measurement TIFFs) and returns a :class:`GrdProduct`: the product's metadata parsed by
**xarray-sentinel** (manifest, image information, geolocation grid, calibration LUTs), the thermal-noise
LUTs (parsed here: xarray-sentinel reads only the first ``noiseAzimuthVector`` of a GRD, see
:mod:`polarxr.ingest.radiometry`) and the GDAL paths of the measurements (``/vsizip/`` inside a zip,
so nothing is unpacked). :meth:`GrdProduct.measurement` opens one polarisation lazily as a dask-backed
``DataArray(line, pixel)`` of uint16 digital numbers.

Every problem is a :class:`~polarxr.errors.ProductError` naming the product and the problem.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.errors import RasterioError

from polarxr.errors import ProductError
from polarxr.ingest.radiometry import CalibrationLut, NoiseLuts, parse_noise
from polarxr.scenes import ProductName, parse_product_name

#: Product types polarxr ingests (GRD: detected, ground range, multi-looked).
SUPPORTED_TYPES = ("GRDM", "GRDH", "GRDF")
#: The polarisation pairs of dual-polarisation products, in band order.
DUAL_POLARISATIONS = {"HH": ("HH", "HV"), "VV": ("VV", "VH")}

_SCHEMAS = {"s1Level1ProductSchema": "annotation", "s1Level1CalibrationSchema": "calibration",
            "s1Level1NoiseSchema": "noise", "s1Level1MeasurementSchema": "measurement"}


@dataclass(frozen=True)
class GeolocationGrid:
    """The annotation's tie points: ``line``/``pixel`` (image indices of sample centres) to WGS84.

    Arrays of shape ``(n_lines, n_pixels)`` of the regular tie-point grid: ``line``, ``pixel``, ``latitude``,
    ``longitude`` (degrees), ``height`` (m above the ellipsoid), ``incidence`` (degrees).
    """

    line: np.ndarray
    pixel: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    height: np.ndarray
    incidence: np.ndarray


@dataclass(frozen=True)
class Polarisation:
    """Where one polarisation's files are and what they hold."""

    name: str
    measurement: str  # GDAL path (``/vsizip/...`` inside a zip)
    annotation: str
    calibration: CalibrationLut
    noise: NoiseLuts


@dataclass(frozen=True)
class GrdProduct:
    """An opened Sentinel-1 GRD product (metadata only; pixels stay on disk until a block is computed)."""

    path: Path
    name: str
    product: ProductName
    shape: tuple[int, int]  # (lines, samples) of the measurement
    pixel_spacing: tuple[float, float]  # (azimuth, range) in metres
    polarisations: dict[str, Polarisation]
    grid: GeolocationGrid
    ipf_version: str
    attrs: dict = field(default_factory=dict)

    @property
    def bands(self) -> list[str]:
        """Polarisations in band order (``HH``, ``HV``)."""
        return list(self.polarisations)

    def measurement(self, polarisation: str, chunks: int | dict | None = 2048) -> xr.DataArray:
        """One polarisation's digital numbers lazily as ``DataArray(line, pixel)`` uint16 (0 = no data)."""
        pol = self.polarisations[polarisation]
        chunks = {"band": 1, "y": chunks, "x": chunks} if isinstance(chunks, int) else chunks
        try:
            data = rioxarray.open_rasterio(pol.measurement, chunks=chunks, lock=False, masked=False)
        except RasterioError as err:
            raise ProductError(self.path, f"measurement of {polarisation} is not readable ({err})") from None
        data = data.squeeze("band", drop=True).drop_vars("spatial_ref", errors="ignore")
        data = data.rename({"y": "line", "x": "pixel"}).assign_coords(
            line=np.arange(self.shape[0]), pixel=np.arange(self.shape[1]))
        data.name = polarisation
        data.attrs = {"units": "dn", "polarisation": polarisation, "product": self.name}
        return data


class _Files:
    """Read access to the files of a product folder or zip, by path relative to the SAFE root."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.root = ""
            self.name = path.name.split(".")[0]
            if not (path / "manifest.safe").is_file():
                raise ProductError(path, "has no manifest.safe; not a Sentinel-1 SAFE product folder")
            return
        if not path.exists():
            raise ProductError(path, "does not exist")
        if path.suffix.lower() != ".zip":
            raise ProductError(path, "is neither a .SAFE folder nor a .zip of one")
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise ProductError(path, f"is a truncated or corrupt zip ({err})") from None
        manifests = [n for n in self.zip.namelist() if PurePosixPath(n).name == "manifest.safe"
                     and len(PurePosixPath(n).parts) <= 2]
        if not manifests:
            raise ProductError(path, "holds no manifest.safe; not a zipped Sentinel-1 SAFE product")
        parent = PurePosixPath(manifests[0]).parent
        self.root = "" if str(parent) == "." else f"{parent}/"
        self.name = (parent.name if self.root else path.name).split(".")[0]

    def member(self, relative: str) -> str:
        return self.root + str(PurePosixPath(relative.removeprefix("./")))

    def exists(self, relative: str) -> bool:
        if self.zip is None:
            return (self.path / relative).is_file()
        try:
            self.zip.getinfo(self.member(relative))
        except KeyError:
            return False
        return True

    def read(self, relative: str) -> bytes:
        try:
            if self.zip is None:
                return (self.path / relative).read_bytes()
            return self.zip.read(self.member(relative))
        except FileNotFoundError:
            raise ProductError(self.path, f"{relative.removeprefix('./')} is missing") from None
        except (zipfile.BadZipFile, OSError, EOFError) as err:  # CRC errors, truncated members
            raise ProductError(self.path, f"is a corrupt zip: {relative.removeprefix('./')} cannot be read "
                                          f"({err})") from None

    def gdal_path(self, relative: str) -> str:
        if self.zip is None:
            return str(self.path.resolve() / relative.removeprefix("./"))
        return f"/vsizip/{self.path.resolve()}/{self.member(relative)}"


def _xml(files: _Files, relative: str) -> bytes:
    """The bytes of an XML file of the product, checked to be well-formed."""
    text = files.read(relative)
    try:
        ElementTree.fromstring(text)
    except ElementTree.ParseError as err:
        raise ProductError(files.path, f"malformed XML in {relative.removeprefix('./')} ({err})") from None
    return text


def _manifest(files: _Files) -> tuple[dict, dict]:
    from xarray_sentinel import esa_safe

    text = _xml(files, "manifest.safe")
    try:
        # a file object, not a path: parse_manifest_sentinel1 is lru-cached on its argument
        return esa_safe.parse_manifest_sentinel1(io.BytesIO(text))
    except (ValueError, KeyError, AttributeError) as err:
        raise ProductError(files.path, f"manifest.safe is not a Sentinel-1 manifest ({err})") from None


def _ipf_version(manifest: bytes) -> str:
    match = re.search(rb'<safe:software name="Sentinel-1 IPF" version="([^"]+)"', manifest)
    return match.group(1).decode() if match else "unknown"


def _geolocation(files: _Files, annotation: bytes, relative: str) -> GeolocationGrid:
    from xarray_sentinel import sentinel1

    try:
        gcp = sentinel1.open_gcp_dataset(io.BytesIO(annotation), attrs={})
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ProductError(files.path, f"{relative}: unreadable geolocation grid ({err})") from None
    line = np.broadcast_to(gcp["line"].values[:, None], gcp["latitude"].shape)
    pixel = np.broadcast_to(gcp["pixel"].values[None, :], gcp["latitude"].shape)
    values = {k: gcp[v].values for k, v in (("latitude", "latitude"), ("longitude", "longitude"),
                                             ("height", "height"), ("incidence", "incidenceAngle"))}
    if any(not np.isfinite(v).all() for v in values.values()) or min(line.shape) < 2:
        raise ProductError(files.path, f"{relative}: the geolocation grid is not a complete regular grid")
    return GeolocationGrid(np.array(line, float), np.array(pixel, float), **values)


def _calibration(files: _Files, relative: str) -> CalibrationLut:
    from xarray_sentinel import sentinel1

    text = _xml(files, relative)
    try:
        cal = sentinel1.open_calibration_dataset(io.BytesIO(text), attrs={})
    except (ValueError, KeyError, TypeError) as err:
        raise ProductError(files.path, f"{relative.removeprefix('./')}: unreadable calibration LUT ({err})") from None
    return CalibrationLut(cal["line"].values.astype(float), cal["pixel"].values.astype(float),
                          cal["sigmaNought"].values.astype(np.float64))


def _image_information(files: _Files, annotation: bytes, relative: str) -> dict:
    from xarray_sentinel import esa_safe

    try:
        info = esa_safe.parse_tag(io.BytesIO(annotation), "//imageInformation")
        product_info = esa_safe.parse_tag(io.BytesIO(annotation), "//productInformation")
        return {"lines": int(info["numberOfLines"]), "samples": int(info["numberOfSamples"]),
                "azimuth_spacing": float(info["azimuthPixelSpacing"]),
                "range_spacing": float(info["rangePixelSpacing"]), "projection": product_info["projection"],
                "pass": product_info.get("pass")}
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise ProductError(files.path, f"{relative}: unreadable image information ({err})") from None


def product_files(path: str | Path) -> tuple[_Files, dict, dict[str, dict[str, str]]]:
    """The product's manifest attributes and, per polarisation, the listed files by kind.

    Kinds: ``annotation``, ``calibration``, ``noise``, ``measurement`` (paths relative to the SAFE root).
    """
    files = _Files(Path(path))
    attrs, listed = _manifest(files)
    by_pol: dict[str, dict[str, str]] = {}
    for href, (schema, _prefix, _swath, pol, _date) in listed.items():
        kind = _SCHEMAS.get(schema)
        if kind is not None:
            by_pol.setdefault(pol.upper(), {})[kind] = href
    return files, attrs, by_pol


def open_product(path: str | Path, require_dual: bool = True) -> GrdProduct:
    """Open and check a Sentinel-1 GRD product (``.SAFE`` folder or ``.zip``), reading only its metadata.

    Raises :class:`ProductError` for: a missing, truncated or corrupt zip; a manifest that lists a file
    that is missing; missing calibration or noise XML; malformed XML; product types other than GRD
    (``not supported: ...``); a single-polarisation product when ``require_dual``; a measurement whose
    size differs from the annotation's.
    """
    path = Path(path)
    files, attrs, by_pol = product_files(path)
    try:
        name = parse_product_name(files.name)
    except ValueError:
        raise ProductError(path, f"{files.name} is not a Sentinel-1 product name "
                                 "(S1x_MODE_TYPE_1SDH_start_stop_orbit_datatake_id)") from None
    product_type = str(attrs.get("product_type", name.product_type)).upper()
    if name.product_type not in SUPPORTED_TYPES or product_type != "GRD":
        kind = name.product_type.rstrip("_")
        raise ProductError(path, f"not supported: {kind} products ({name.mode} {kind}); polarxr ingests "
                                 "GRD products (EW GRDM, IW GRDH)")
    pols = [p for p in ("HH", "HV", "VV", "VH") if p in by_pol]
    if not pols:
        raise ProductError(path, "manifest.safe lists no measurement of any polarisation")
    pair = DUAL_POLARISATIONS.get(pols[0], ())
    if require_dual and not all(p in pols for p in pair):
        raise ProductError(path, f"single-polarisation product ({', '.join(pols)} only); polarxr needs the "
                                 f"dual-polarisation pair {' and '.join(pair or ('HH', 'HV'))}")
    pols = [p for p in pair if p in pols] if require_dual else pols
    manifest = files.read("manifest.safe")
    polarisations, info, grid = {}, None, None
    for pol in pols:
        listed = by_pol[pol]
        for kind in ("annotation", "calibration", "noise", "measurement"):
            if kind not in listed:
                raise ProductError(path, f"manifest.safe lists no {kind} {'XML ' if kind != 'measurement' else ''}"
                                         f"for {pol}; it is needed for "
                                         f"{'radiometric calibration' if kind == 'calibration' else kind}")
            if not files.exists(listed[kind]):
                raise ProductError(path, f"manifest.safe lists {listed[kind].removeprefix('./')}, which is missing "
                                         f"({kind}{' XML' if kind != 'measurement' else ''} of {pol})")
        annotation = _xml(files, listed["annotation"])
        relative = listed["annotation"].removeprefix("./")
        pol_info = _image_information(files, annotation, relative)
        if pol_info["projection"] != "Ground Range":
            raise ProductError(path, f"not supported: {pol_info['projection']} products; polarxr ingests GRD")
        if info is None:
            info, grid = pol_info, _geolocation(files, annotation, relative)
        elif (pol_info["lines"], pol_info["samples"]) != (info["lines"], info["samples"]):
            raise ProductError(path, f"{pol} has {pol_info['lines']} x {pol_info['samples']} px, "
                                     f"{pols[0]} {info['lines']} x {info['samples']}")
        noise_relative = listed["noise"].removeprefix("./")
        noise = parse_noise(_xml(files, listed["noise"]), path, noise_relative)
        measurement = files.gdal_path(listed["measurement"])
        _check_measurement(path, measurement, pol, (info["lines"], info["samples"]))
        polarisations[pol] = Polarisation(pol, measurement, relative, _calibration(files, listed["calibration"]),
                                          noise)
    return GrdProduct(path=path, name=files.name, product=name, shape=(info["lines"], info["samples"]),
                      pixel_spacing=(info["azimuth_spacing"], info["range_spacing"]), polarisations=polarisations,
                      grid=grid, ipf_version=_ipf_version(manifest),
                      attrs={"pass": attrs.get("pass"), "mode": attrs.get("mode"),
                             "relative_orbit": attrs.get("relative_orbit_number")})


def _check_measurement(path: Path, measurement: str, pol: str, shape: tuple[int, int]) -> None:
    try:
        with rasterio.open(measurement) as src:
            size, dtype = (src.height, src.width), src.dtypes[0]
    except RasterioError as err:
        raise ProductError(path, f"measurement of {pol} is not a readable TIFF ({err})") from None
    if size != shape:
        raise ProductError(path, f"measurement of {pol} has {size[0]} x {size[1]} px, the annotation says "
                                 f"{shape[0]} x {shape[1]}")
    if dtype != "uint16":
        raise ProductError(path, f"measurement of {pol} holds {dtype}, a GRD holds uint16 digital numbers")


def is_product(path: str | Path) -> bool:
    """True for a path that names a Sentinel-1 product folder (``*.SAFE``) or a zip (``*.zip``)."""
    path = Path(path)
    return path.suffix.upper() == ".SAFE" or path.suffix.lower() == ".zip"


def product_stem(path: str | Path) -> str:
    """The product name of a ``.SAFE`` folder or ``.zip`` (``S1A_EW_GRDM_1SDH_..._9FE3``)."""
    return Path(path).name.split(".")[0]
