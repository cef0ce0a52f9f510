"""Synthetic Sentinel-1 GRD products in the real SAFE layout, with known geometry and radiometry.

:func:`write_grd_product` writes ``S1A_EW_GRDM_1SDH_<start>_<stop>_<orbit>_<datatake>_<id>.SAFE`` (and,
with ``zip=True``, the same as ``.zip``) as the IPF delivers it::

    manifest.safe                               every file listed (size, MD5) in dataObjectSection
    annotation/s1a-ew-grd-hh-...-001.xml        image information, geolocation grid (tie points)
    annotation/calibration/calibration-s1a-ew-grd-hh-...-001.xml   sigmaNought / betaNought / gamma / dn LUTs
    annotation/calibration/noise-s1a-ew-grd-hh-...-001.xml         range noise vectors + azimuth noise blocks
    measurement/s1a-ew-grd-hh-...-001.tiff      uint16 DN, striped, with the tie points as GCPs (EPSG:4326)

The XML follows the structure of the real files (the IW GRDH annotation and the IW SLC calibration and
noise XML in ``../shared/data/s1-safe``): range noise vectors with pixel lists of their own, one azimuth
noise block per sub-swath (EW1..EW5) and azimuth half.

Geometry: line ``l``, pixel ``p`` lie at the geodesic point ``p * range_spacing`` across-track (90 degrees
right of the track) from the point ``l * azimuth_spacing`` along a geodesic track through ``centre`` with
``heading`` (default a descending EW pass over East Greenland, inside the ExtremeEarth area); heights 0.
:meth:`SyntheticGrd.lonlat` is this exact geometry; the annotation's tie points sample it.

Radiometry: ``DN = round(sqrt(sigma0 * A^2 + noise))`` with the LUTs written, and sigma0 a known pattern:
sea near range, a ragged ice band, land at far range (dB means per class with an incidence gradient,
optional 4.4-look gamma speckle) and 5 x 5 px bright targets centred on tie points
(:attr:`SyntheticGrd.targets`). DN 0 (no data) in the first and last :data:`BORDER` samples of every line.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from pyproj import Geod
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS as RioCRS

from polarxr.io import atomic_path

#: Samples of no data (DN 0) at both ends of every line.
BORDER = 12
#: Full size (lines, samples) of an EW GRDM product.
FULL_SIZE = (10000, 10400)
#: Sub-swath edges of EW (fraction of the samples).
SUBSWATHS = (0.0, 0.22, 0.42, 0.61, 0.81, 1.0)
_GEOD = Geod(ellps="WGS84")
_C = 299_792_458.0
_TIME = "%Y-%m-%dT%H:%M:%S.%f"
#: dB means (HH, HV) per class at 33 degrees incidence, and the slope (dB / degree).
_CLASS_DB = {"sea": (-20.0, -29.0), "ice": (-13.0, -21.0), "land": (-7.0, -14.0)}
_SLOPE = (-0.20, -0.08)
_TARGET_DB = 8.0


@dataclass(frozen=True)
class SyntheticGrd:
    """A written synthetic GRD product and the truth it was made from."""

    path: Path
    name: str
    shape: tuple[int, int]
    spacing: tuple[float, float]
    centre: tuple[float, float]
    heading: float
    polarisations: tuple[str, ...]
    targets: tuple[tuple[int, int], ...]
    zip_path: Path | None = None
    _origin: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0), repr=False)

    def lonlat(self, line: np.ndarray, pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact (lon, lat) in degrees of (fractional) image positions ``line``, ``pixel``."""
        return _forward(self._origin, self.spacing, np.asarray(line, float), np.asarray(pixel, float))


def _forward(origin, spacing, line, pixel):
    lon0, lat0, heading = origin
    line, pixel = np.broadcast_arrays(line, pixel)
    n = line.size
    lon_t, lat_t, back = _GEOD.fwd(np.full(n, lon0), np.full(n, lat0), np.full(n, heading),
                                   line.ravel() * spacing[0])
    azimuth = np.asarray(back) + 180.0  # forward azimuth of the track at that point
    lon, lat, _ = _GEOD.fwd(lon_t, lat_t, azimuth + 90.0, pixel.ravel() * spacing[1])
    return np.asarray(lon).reshape(line.shape), np.asarray(lat).reshape(line.shape)


def _origin(centre, heading, shape, spacing):
    lat_c, lon_c = centre
    lon_m, lat_m, back = _GEOD.fwd(lon_c, lat_c, heading + 180.0, shape[0] / 2 * spacing[0])
    track = back  # the back azimuth at the mid-line point points along the track
    lon_s, lat_s, back2 = _GEOD.fwd(lon_m, lat_m, track - 90.0, shape[1] / 2 * spacing[1])
    # heading at the near-range origin: parallel to the track through the centre
    return float(lon_s), float(lat_s), float(heading)


def _incidence(pixel: np.ndarray, samples: int) -> np.ndarray:
    return 18.9 + (47.0 - 18.9) * np.asarray(pixel, float) / max(samples - 1, 1)


def _calibration_a(line: np.ndarray, pixel: np.ndarray, shape) -> np.ndarray:
    line, pixel = np.asarray(line, float), np.asarray(pixel, float)
    return 450.0 + 250.0 * pixel / shape[1] + 10.0 * np.sin(np.pi * line / shape[0])


def _nesz_db(pixel: np.ndarray, samples: int) -> np.ndarray:
    u = np.asarray(pixel, float) / samples
    out = np.zeros_like(u)
    for k in range(5):
        lo, hi = SUBSWATHS[k], SUBSWATHS[k + 1]
        inside = (u >= lo) & (u <= hi)
        w = (u[inside] - lo) / (hi - lo)
        out[inside] = (-24.0, -27.0, -26.5, -27.5, -28.0)[k] + 4.0 * (2 * w - 1) ** 2
    return out


def _azimuth_blocks(shape) -> list[dict]:
    lines, samples = shape
    blocks = []
    half = lines // 2
    for k in range(5):
        first_s = int(round(SUBSWATHS[k] * samples))
        last_s = int(round(SUBSWATHS[k + 1] * samples)) - 1 if k < 4 else samples - 1
        for first_l, last_l in ((0, half - 1), (half, lines - 1)):
            az = np.unique(np.r_[np.arange(first_l, last_l, 50), last_l])
            lut = 1.0 + 0.15 * np.sin(2 * np.pi * az / (700.0 + 90 * k) + k)
            blocks.append(dict(swath=f"EW{k + 1}", first_line=first_l, last_line=last_l, first_sample=first_s,
                               last_sample=last_s, lines=az, lut=lut))
    return blocks


def _noise_true(line: np.ndarray, pixel: np.ndarray, shape, blocks) -> np.ndarray:
    """The noise power written to the LUTs, at the grid ``line x pixel`` (what the LUTs interpolate)."""
    a = _calibration_a(line[:, None], pixel[None, :], shape)
    rng = a * a * 10 ** (_nesz_db(pixel, shape[1]) / 10)[None, :]
    az = np.ones((len(line), len(pixel)))
    for b in blocks:
        rows = (line >= b["first_line"]) & (line <= b["last_line"])
        cols = (pixel >= b["first_sample"]) & (pixel <= b["last_sample"])
        az[np.ix_(rows, cols)] = np.interp(line[rows], b["lines"], b["lut"])[:, None]
    return rng * az


def _coast(line: np.ndarray, samples: int) -> np.ndarray:
    return samples * 0.62 + samples * 0.05 * np.sin(line / 900.0) + samples * 0.02 * np.sin(line / 137.0 + 1)


def pattern_db(line: np.ndarray, pixel: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """The noise-free sigma0 pattern in dB (HH, HV) at the grid ``line x pixel`` (without targets, speckle)."""
    line, pixel = np.asarray(line, float)[:, None], np.asarray(pixel, float)[None, :]
    coast = _coast(line, shape[1])
    edge = coast - shape[1] * (0.18 + 0.04 * np.sin(line / 500.0 + 2))
    land, ice = pixel > coast, (pixel > edge) & (pixel <= coast)
    dtheta = _incidence(pixel, shape[1]) - 33.0
    texture = 1.5 * np.sin(line / 310.0) * np.cos(pixel / 420.0)
    out = []
    for band in range(2):
        base = np.where(land, _CLASS_DB["land"][band], np.where(ice, _CLASS_DB["ice"][band], _CLASS_DB["sea"][band]))
        out.append(base + _SLOPE[band] * dtheta + texture)
    return out[0], out[1]


def _targets(tie_lines, tie_pixels) -> list[tuple[int, int]]:
    return [(int(l), int(p)) for l in tie_lines[1:-1] for p in tie_pixels[1:-1:3]]


def _name(mission, mode, product_type, pols, start, orbit, datatake, product_id):
    stop = start + timedelta(seconds=60)
    pol_code = {("HH", "HV"): "DH", ("VV", "VH"): "DV", ("HH",): "SH", ("VV",): "SV", ("HV",): "SH"}[tuple(pols)]
    return (f"{mission}_{mode}_{product_type}_1S{pol_code}_{start:%Y%m%dT%H%M%S}_{stop:%Y%m%dT%H%M%S}_"
            f"{orbit:06d}_{datatake:06X}_{product_id:04X}")


def write_grd_product(out_dir: str | Path, *, size: tuple[int, int] = (1000, 1040), seed: int = 0,
                      centre: tuple[float, float] = (72.3, -19.0), heading: float = 196.0,
                      spacing: tuple[float, float] = (40.0, 40.0), speckle: bool = True,
                      start: datetime = datetime(2018, 3, 8, 7, 54, 30), mission: str = "S1A", mode: str = "EW",
                      product_type: str = "GRDM", polarisations: tuple[str, ...] = ("HH", "HV"),
                      azimuth_noise: bool = True, zip: bool = False, keep_safe: bool = True) -> SyntheticGrd:
    """Write a synthetic GRD product of ``size`` (lines, samples) into ``out_dir``; see the module docstring.

    ``centre`` (lat, lon) and ``heading`` (degrees) place it (default: East Greenland, on the ExtremeEarth
    area); ``spacing`` (azimuth, range) in metres; ``product_type`` "GRDM"/"GRDH" (or "SLC_" for a product
    polarxr must refuse). ``zip=True`` also writes ``<name>.zip`` (the SAFE folder inside, stored);
    ``keep_safe=False`` then removes the folder. Deterministic for its arguments.
    """
    out_dir = Path(out_dir)
    lines, samples = size
    orbit = 20177 + round((start - datetime(2018, 1, 16, 7, 54, 30)).total_seconds() / (12 * 86400 / 175))
    rng = np.random.default_rng(seed)
    datatake, product_id = int(0x0226B9 + orbit - 20177), int(rng.integers(0, 0x10000))
    name = _name(mission, mode, product_type, polarisations, start, orbit, datatake, product_id)
    origin = _origin(centre, heading, size, spacing)
    n_az = max(2, math.ceil(lines / 1000) + 1)
    tie_lines = np.unique(np.linspace(0, lines - 1, n_az).round().astype(int))
    tie_pixels = np.unique(np.linspace(0, samples - 1, 21).round().astype(int))
    targets = _targets(tie_lines, tie_pixels)
    safe = out_dir / f"{name}.SAFE"
    with atomic_path(safe) as tmp:
        (tmp / "annotation" / "calibration").mkdir(parents=True)
        (tmp / "measurement").mkdir()
        ctx = _Context(name, mission, mode, product_type, start, orbit, datatake, size, spacing, origin, tie_lines,
                       tie_pixels, azimuth_noise)
        files = []
        for index, pol in enumerate(polarisations, start=1):
            stem = (f"s1{mission[-1].lower()}-{mode.lower()}-{product_type[:3].lower()}-{pol.lower()}-"
                    f"{start:%Y%m%dt%H%M%S}-{start + timedelta(seconds=60):%Y%m%dt%H%M%S}-{orbit:06d}-"
                    f"{datatake:06x}-{index:03d}")
            ann = Path("annotation") / f"{stem}.xml"
            cal = Path("annotation/calibration") / f"calibration-{stem}.xml"
            noi = Path("annotation/calibration") / f"noise-{stem}.xml"
            mea = Path("measurement") / f"{stem}.tiff"
            (tmp / ann).write_text(ctx.annotation(pol, index))
            (tmp / cal).write_text(ctx.calibration(pol, index))
            (tmp / noi).write_text(ctx.noise(pol, index))
            _write_measurement(tmp / mea, ctx, pol, index - 1, targets, speckle, seed)
            files += [(pol, "product", ann), (pol, "noise", noi), (pol, "calibration", cal), (pol, "measurement", mea)]
        (tmp / "manifest.safe").write_text(ctx.manifest(polarisations, files, tmp))
    zip_path = None
    if zip:
        zip_path = zip_product(safe, out_dir / f"{name}.zip")
        if not keep_safe:
            shutil.rmtree(safe)
    return SyntheticGrd(safe, name, size, spacing, centre, heading, tuple(polarisations), tuple(targets), zip_path,
                        origin)


def zip_product(safe: str | Path, zip_path: str | Path) -> Path:
    """Zip a SAFE folder as delivered (the folder at the top of the archive, members stored)."""
    safe, zip_path = Path(safe), Path(zip_path)
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(safe.rglob("*")):
            if file.is_file():
                archive.write(file, f"{safe.name}/{file.relative_to(safe).as_posix()}")
    return zip_path


def _write_measurement(path: Path, ctx: "_Context", pol: str, band: int, targets, speckle: bool, seed: int) -> None:
    lines, samples = ctx.size
    gcps = [GroundControlPoint(row=float(l), col=float(p), x=float(lon), y=float(lat), z=0.0)
            for l, p, lon, lat in ctx.tie_point_list()]
    profile = dict(driver="GTiff", height=lines, width=samples, count=1, dtype="uint16")
    pixel = np.arange(samples, dtype=float)
    with rasterio.open(path, "w", **profile) as dst:
        dst.gcps = (gcps, RioCRS.from_epsg(4326))
        step = 512
        for r0 in range(0, lines, step):
            line = np.arange(r0, min(lines, r0 + step), dtype=float)
            db = pattern_db(line, pixel, ctx.size)[band]
            s0 = 10 ** (db / 10)
            for tl, tp in targets:
                rows = slice(max(tl - 2, r0), min(tl + 3, r0 + len(line)))
                if rows.start < rows.stop:
                    s0[rows.start - r0:rows.stop - r0, tp - 2:tp + 3] = 10 ** (_TARGET_DB / 10)
            if speckle:
                gen = np.random.default_rng(np.random.SeedSequence([seed, band, r0]))
                s0 = s0 * gen.gamma(4.4, 1 / 4.4, size=s0.shape)
            a = _calibration_a(line[:, None], pixel[None, :], ctx.size)
            power = s0 * a * a + _noise_true(line, pixel, ctx.size, ctx.blocks if ctx.azimuth_noise else [])
            dn = np.clip(np.rint(np.sqrt(power)), 1, 65535).astype(np.uint16)
            dn[:, :BORDER] = 0
            dn[:, samples - BORDER:] = 0
            dst.write(dn, 1, window=rasterio.windows.Window(0, r0, samples, len(line)))


def _numbers(values, fmt="{:.6e}") -> str:
    return " ".join(fmt.format(v) for v in values)


@dataclass
class _Context:
    name: str
    mission: str
    mode: str
    product_type: str
    start: datetime
    orbit: int
    datatake: int
    size: tuple[int, int]
    spacing: tuple[float, float]
    origin: tuple[float, float, float]
    tie_lines: np.ndarray
    tie_pixels: np.ndarray
    azimuth_noise: bool

    def __post_init__(self):
        self.blocks = _azimuth_blocks(self.size)
        self.interval = 60.0 / max(self.size[0] - 1, 1)

    def time(self, line: float) -> str:
        return (self.start + timedelta(seconds=float(line) * self.interval)).strftime(_TIME)

    def tie_point_list(self):
        line, pixel = np.meshgrid(self.tie_lines, self.tie_pixels, indexing="ij")
        lon, lat = _forward(self.origin, self.spacing, line.astype(float), pixel.astype(float))
        return list(zip(line.ravel(), pixel.ravel(), lon.ravel(), lat.ravel()))

    def header(self, pol: str, index: int) -> str:
        stop = self.start + timedelta(seconds=60)
        return f"""  <adsHeader>
    <missionId>{self.mission}</missionId>
    <productType>{self.product_type[:3]}</productType>
    <polarisation>{pol}</polarisation>
    <mode>{self.mode}</mode>
    <swath>{self.mode}</swath>
    <startTime>{self.start.strftime(_TIME)}</startTime>
    <stopTime>{stop.strftime(_TIME)}</stopTime>
    <absoluteOrbitNumber>{self.orbit}</absoluteOrbitNumber>
    <missionDataTakeId>{self.datatake}</missionDataTakeId>
    <imageNumber>{index:03d}</imageNumber>
  </adsHeader>
"""

    def annotation(self, pol: str, index: int) -> str:
        lines, samples = self.size
        points = []
        for l, p, lon, lat in self.tie_point_list():
            theta = float(_incidence(p, samples))
            srt = 2 * 693_000.0 / math.cos(math.radians(theta)) / _C
            points.append(f"""      <geolocationGridPoint>
        <azimuthTime>{self.time(l)}</azimuthTime>
        <slantRangeTime>{srt:.15e}</slantRangeTime>
        <line>{l}</line>
        <pixel>{p}</pixel>
        <latitude>{lat:.15e}</latitude>
        <longitude>{lon:.15e}</longitude>
        <height>0.000000000000000e+00</height>
        <incidenceAngle>{theta:.15e}</incidenceAngle>
        <elevationAngle>{theta * 0.88:.15e}</elevationAngle>
      </geolocationGridPoint>""")
        stop = self.start + timedelta(seconds=60)
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<product>
{self.header(pol, index)}  <generalAnnotation>
    <productInformation>
      <pass>Descending</pass>
      <timelinessCategory>Fast-24h</timelinessCategory>
      <platformHeading>{self.origin[2] - 360:.15e}</platformHeading>
      <projection>Ground Range</projection>
      <rangeSamplingRate>2.498640000000000e+07</rangeSamplingRate>
      <radarFrequency>5.405000454334350e+09</radarFrequency>
      <azimuthSteeringRate>2.390895448000000e+00</azimuthSteeringRate>
    </productInformation>
  </generalAnnotation>
  <imageAnnotation>
    <imageInformation>
      <productFirstLineUtcTime>{self.start.strftime(_TIME)}</productFirstLineUtcTime>
      <productLastLineUtcTime>{stop.strftime(_TIME)}</productLastLineUtcTime>
      <ascendingNodeTime>{(self.start - timedelta(minutes=40)).strftime(_TIME)}</ascendingNodeTime>
      <anchorTime>{self.start.strftime(_TIME)}</anchorTime>
      <productComposition>Slice</productComposition>
      <sliceNumber>1</sliceNumber>
      <slantRangeTime>{2 * 693_000.0 / math.cos(math.radians(18.9)) / _C:.15e}</slantRangeTime>
      <pixelValue>Detected</pixelValue>
      <outputPixels>16 bit Unsigned Integer</outputPixels>
      <rangePixelSpacing>{self.spacing[1]:.6e}</rangePixelSpacing>
      <azimuthPixelSpacing>{self.spacing[0]:.6e}</azimuthPixelSpacing>
      <azimuthTimeInterval>{self.interval:.15e}</azimuthTimeInterval>
      <azimuthFrequency>{1 / self.interval:.15e}</azimuthFrequency>
      <numberOfSamples>{samples}</numberOfSamples>
      <numberOfLines>{lines}</numberOfLines>
      <zeroDopMinusAcqTime>1.505690820000000e+02</zeroDopMinusAcqTime>
      <incidenceAngleMidSwath>{float(_incidence(samples / 2, samples)):.15e}</incidenceAngleMidSwath>
    </imageInformation>
    <processingInformation>
      <thermalNoiseCorrectionPerformed>false</thermalNoiseCorrectionPerformed>
      <ellipsoidName>WGS84</ellipsoidName>
      <ellipsoidSemiMajorAxis>6.378137000000000e+06</ellipsoidSemiMajorAxis>
      <ellipsoidSemiMinorAxis>6.356752314245000e+06</ellipsoidSemiMinorAxis>
    </processingInformation>
  </imageAnnotation>
  <swathTiming>
    <linesPerBurst>0</linesPerBurst>
    <samplesPerBurst>0</samplesPerBurst>
    <burstList count="0"/>
  </swathTiming>
  <geolocationGrid>
    <geolocationGridPointList count="{len(points)}">
{chr(10).join(points)}
    </geolocationGridPointList>
  </geolocationGrid>
</product>
"""

    def calibration(self, pol: str, index: int) -> str:
        lines, samples = self.size
        cal_lines = np.unique(np.r_[np.arange(0, lines, max(1, lines // 20)), lines - 1])
        pixels = np.unique(np.r_[np.arange(0, samples, 40), samples - 1])
        vectors = []
        for l in cal_lines:
            a = _calibration_a(np.full(len(pixels), l), pixels, self.size)
            vectors.append(f"""    <calibrationVector>
      <azimuthTime>{self.time(l)}</azimuthTime>
      <line>{l}</line>
      <pixel count="{len(pixels)}">{_numbers(pixels, "{:d}")}</pixel>
      <sigmaNought count="{len(pixels)}">{_numbers(a)}</sigmaNought>
      <betaNought count="{len(pixels)}">{_numbers(np.full(len(pixels), 2.370000e+02))}</betaNought>
      <gamma count="{len(pixels)}">{_numbers(a * 0.92)}</gamma>
      <dn count="{len(pixels)}">{_numbers(np.full(len(pixels), 2.007929e+02))}</dn>
    </calibrationVector>""")
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<calibration>
{self.header(pol, index)}  <calibrationInformation>
    <absoluteCalibrationConstant>1.000000e+00</absoluteCalibrationConstant>
  </calibrationInformation>
  <calibrationVectorList count="{len(vectors)}">
{chr(10).join(vectors)}
  </calibrationVectorList>
</calibration>
"""

    def noise(self, pol: str, index: int) -> str:
        lines, samples = self.size
        noise_lines = np.unique(np.r_[np.arange(0, lines, max(1, lines // 10)), lines - 1])
        vectors = []
        for k, l in enumerate(noise_lines):
            # GRD range vectors carry pixel lists of their own (offset here), as in real products
            pixels = np.unique(np.r_[0, np.arange(13 * (k % 3), samples, 40), samples - 1])
            a = _calibration_a(np.full(len(pixels), l), pixels, self.size)
            values = a * a * 10 ** (_nesz_db(pixels, samples) / 10)
            vectors.append(f"""    <noiseRangeVector>
      <azimuthTime>{self.time(l)}</azimuthTime>
      <line>{l}</line>
      <pixel count="{len(pixels)}">{_numbers(pixels, "{:d}")}</pixel>
      <noiseRangeLut count="{len(pixels)}">{_numbers(values)}</noiseRangeLut>
    </noiseRangeVector>""")
        blocks = []
        for b in (self.blocks if self.azimuth_noise else []):
            blocks.append(f"""    <noiseAzimuthVector>
      <swath>{b["swath"]}</swath>
      <firstAzimuthLine>{b["first_line"]}</firstAzimuthLine>
      <firstRangeSample>{b["first_sample"]}</firstRangeSample>
      <lastAzimuthLine>{b["last_line"]}</lastAzimuthLine>
      <lastRangeSample>{b["last_sample"]}</lastRangeSample>
      <line count="{len(b["lines"])}">{_numbers(b["lines"], "{:d}")}</line>
      <noiseAzimuthLut count="{len(b["lut"])}">{_numbers(b["lut"])}</noiseAzimuthLut>
    </noiseAzimuthVector>""")
        azimuth = (f"""  <noiseAzimuthVectorList count="{len(blocks)}">
{chr(10).join(blocks)}
  </noiseAzimuthVectorList>
""" if self.azimuth_noise else "")
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<noise>
{self.header(pol, index)}  <noiseRangeVectorList count="{len(vectors)}">
{chr(10).join(vectors)}
  </noiseRangeVectorList>
{azimuth}</noise>
"""

    def manifest(self, pols, files, root: Path) -> str:
        ids = {}
        sections = []
        schema = {"product": "s1Level1ProductSchema", "noise": "s1Level1NoiseSchema",
                  "calibration": "s1Level1CalibrationSchema", "measurement": "s1Level1MeasurementSchema"}
        for pol, kind, rel in files:
            ident = f"{kind if kind != 'measurement' else ''}{rel.stem.split('-', 1)[-1] if kind != 'product' else rel.stem}"
            ident = ident.replace("-", "")
            ids[(pol, kind)] = ident
            data = (root / rel).read_bytes()
            mime = "application/octet-stream" if kind == "measurement" else "text/xml"
            sections.append(f"""    <dataObject ID="{ident}" repID="{schema[kind]}">
      <byteStream mimeType="{mime}" size="{len(data)}">
        <fileLocation locatorType="URL" href="./{rel.as_posix()}"/>
        <checksum checksumName="MD5">{hashlib.md5(data).hexdigest()}</checksum>
      </byteStream>
    </dataObject>""")
        units = "\n".join(
            f"""      <xfdu:contentUnit unitType="Metadata Unit" repID="{schema[kind]}">
        <dataObjectPointer dataObjectID="{ids[(pol, kind)]}"/>
      </xfdu:contentUnit>""" for pol, kind, _ in files if kind != "measurement")
        units += "\n" + "\n".join(
            f"""      <xfdu:contentUnit unitType="Measurement Data Unit" repID="s1Level1MeasurementSchema">
        <dataObjectPointer dataObjectID="{ids[(pol, 'measurement')]}"/>
      </xfdu:contentUnit>""" for pol in pols)
        stop = self.start + timedelta(seconds=60)
        corners = [(0, 0), (0, self.size[1] - 1), (self.size[0] - 1, self.size[1] - 1), (self.size[0] - 1, 0)]
        lon, lat = _forward(self.origin, self.spacing, np.array([c[0] for c in corners], float),
                            np.array([c[1] for c in corners], float))
        footprint = " ".join(f"{la:.6f},{lo:.6f}" for la, lo in zip(lat, lon))
        pol_tags = "\n".join(f"            <s1sarl1:transmitterReceiverPolarisation>{p}"
                             f"</s1sarl1:transmitterReceiverPolarisation>" for p in pols)
        relative = (self.orbit - 73) % 175 + 1
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<xfdu:XFDU xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:gml="http://www.opengis.net/gml" xmlns:xfdu="urn:ccsds:schema:xfdu:1" xmlns:safe="http://www.esa.int/safe/sentinel-1.0" xmlns:s1="http://www.esa.int/safe/sentinel-1.0/sentinel-1" xmlns:s1sar="http://www.esa.int/safe/sentinel-1.0/sentinel-1/sar" xmlns:s1sarl1="http://www.esa.int/safe/sentinel-1.0/sentinel-1/sar/level-1" version="esa/safe/sentinel-1.0/sentinel-1/sar/level-1/{self.product_type[:3].lower()}/standard/ewdp">
  <informationPackageMap>
    <xfdu:contentUnit unitType="SAFE Archive Information Package" textInfo="Sentinel-1 {self.mode} Level-1 {self.product_type[:3]} Product" dmdID="acquisitionPeriod platform generalProductInformation measurementOrbitReference measurementFrameSet" pdiID="processing">
{units}
    </xfdu:contentUnit>
  </informationPackageMap>
  <metadataSection>
    <metadataObject ID="processing" classification="PROVENANCE" category="PDI">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Processing">
        <xmlData>
          <safe:processing name="GRD Post Processing" start="{stop.strftime(_TIME)}" stop="{stop.strftime(_TIME)}">
            <safe:facility country="Norway" name="polarxr synthetic products" organisation="polarxr" site="offline">
              <safe:software name="Sentinel-1 IPF" version="{'003.31' if self.azimuth_noise else '002.72'}"/>
            </safe:facility>
          </safe:processing>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="platform" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Platform Description">
        <xmlData>
          <safe:platform>
            <safe:nssdcIdentifier>2014-016A</safe:nssdcIdentifier>
            <safe:familyName>SENTINEL-1</safe:familyName>
            <safe:number>{self.mission[-1]}</safe:number>
            <safe:instrument>
              <safe:familyName abbreviation="SAR">Synthetic Aperture Radar</safe:familyName>
              <safe:extension>
                <s1sarl1:instrumentMode>
                  <s1sarl1:mode>{self.mode}</s1sarl1:mode>
                  <s1sarl1:swath>{self.mode}</s1sarl1:swath>
                </s1sarl1:instrumentMode>
              </safe:extension>
            </safe:instrument>
          </safe:platform>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="measurementOrbitReference" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Orbit Reference">
        <xmlData>
          <safe:orbitReference>
            <safe:orbitNumber type="start">{self.orbit}</safe:orbitNumber>
            <safe:orbitNumber type="stop">{self.orbit}</safe:orbitNumber>
            <safe:relativeOrbitNumber type="start">{relative}</safe:relativeOrbitNumber>
            <safe:relativeOrbitNumber type="stop">{relative}</safe:relativeOrbitNumber>
            <safe:cycleNumber>1</safe:cycleNumber>
            <safe:phaseIdentifier>1</safe:phaseIdentifier>
            <safe:extension>
              <s1:orbitProperties>
                <s1:pass>DESCENDING</s1:pass>
                <s1:ascendingNodeTime>{(self.start - timedelta(minutes=40)).strftime(_TIME)}</s1:ascendingNodeTime>
              </s1:orbitProperties>
            </safe:extension>
          </safe:orbitReference>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="generalProductInformation" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="General Product Information">
        <xmlData>
          <s1sarl1:standAloneProductInformation>
            <s1sarl1:instrumentConfigurationID>1</s1sarl1:instrumentConfigurationID>
            <s1sarl1:missionDataTakeID>{self.datatake}</s1sarl1:missionDataTakeID>
{pol_tags}
            <s1sarl1:productClass>S</s1sarl1:productClass>
            <s1sarl1:productClassDescription>SAR Standard L1 Product</s1sarl1:productClassDescription>
            <s1sarl1:productComposition>Slice</s1sarl1:productComposition>
            <s1sarl1:productType>{self.product_type[:3]}</s1sarl1:productType>
            <s1sarl1:productTimelinessCategory>Fast-24h</s1sarl1:productTimelinessCategory>
          </s1sarl1:standAloneProductInformation>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="acquisitionPeriod" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Acquisition Period">
        <xmlData>
          <safe:acquisitionPeriod>
            <safe:startTime>{self.start.strftime(_TIME)}</safe:startTime>
            <safe:stopTime>{stop.strftime(_TIME)}</safe:stopTime>
          </safe:acquisitionPeriod>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="measurementFrameSet" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Frame Set">
        <xmlData>
          <safe:frameSet>
            <safe:frame>
              <safe:footPrint srsName="http://www.opengis.net/gml/srs/epsg.xml#4326">
                <gml:coordinates>{footprint}</gml:coordinates>
              </safe:footPrint>
            </safe:frame>
          </safe:frameSet>
        </xmlData>
      </metadataWrap>
    </metadataObject>
  </metadataSection>
  <dataObjectSection>
{chr(10).join(sections)}
  </dataObjectSection>
</xfdu:XFDU>
"""
