"""STAC: an Item per processed scene describing its outputs, and scene lists read from STAC catalogs.

Each processed scene gets ``<scene>.json``, a STAC 1.1 Item beside its outputs with relative asset hrefs
(the folder can be moved or served as is): ``class_map`` (COG, classification extension: 0 land,
1 sea, 2 ice, 255 nodata), ``probabilities`` (Zarr v3, uint8 p x 254 per class, 255 nodata) and ``quicklook``
(PNG). ``datetime`` is the acquisition start from the product name (UTC), with ``start_datetime`` and
``end_datetime``; the projection extension carries the scene's CRS (``proj:code`` where it has an EPSG
code, ``proj:wkt2`` always), shape and transform; ``bbox``/``geometry`` are the scene rectangle in WGS84.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pystac
import rasterio
import shapely
from pyproj import CRS
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension

from polarxr.classes import CLASS_COLOURS, CLASS_NAMES, NO_LABEL
from polarxr.errors import SceneError
from polarxr.io import as_path, atomic_path, is_url, open_binary
from polarxr.region import bounds_footprint, lonlat_footprint
from polarxr.scenes import parse_product_name, valid_footprint

#: Media types of the assets polarxr writes and of the scenes it reads.
ZARR_MEDIA_TYPE = "application/vnd.zarr; version=3"
GEOPACKAGE_MEDIA_TYPE = "application/geopackage+sqlite3"
SCENE_MEDIA_TYPES = {pystac.MediaType.GEOTIFF, pystac.MediaType.COG, pystac.MediaType.TIFF, "image/tiff"}


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def scene_item(
    scene_id: str,
    scene_path: str | Path,
    item_path: str | Path,
    outputs: dict[str, Path | None],
    properties: dict | None = None,
) -> pystac.Item:
    """A STAC Item for one processed scene; asset hrefs are relative to ``item_path``'s folder.

    ``outputs`` maps ``class_map``/``probabilities``/``quicklook`` to paths (None: left out). The grid
    is read from the class map (the scene's grid); the footprint is the outline of its mapped pixels.
    ``properties`` are added as Item properties.
    Raises :class:`SceneError` when ``scene_path``'s name is not a Sentinel-1 product name.
    """
    try:
        product = parse_product_name(scene_path)
    except ValueError as err:
        raise SceneError(scene_path, f"{err}; the acquisition time for the STAC Item comes from it") from None
    with rasterio.open(str(outputs["class_map"])) as src:
        bounds, crs, transform, shape = tuple(src.bounds), src.crs, src.transform, (src.height, src.width)
    # the outline of the mapped (not nodata) pixels, not the grid's rectangle; 7 decimals of a degree:
    # about 1 cm, plenty for a footprint and a compact JSON
    valid = valid_footprint(outputs["class_map"])
    footprint = bounds_footprint(bounds, crs) if valid is None else lonlat_footprint(valid, crs)
    footprint = shapely.set_precision(footprint, 1e-7)
    item = pystac.Item(
        id=scene_id,
        geometry=shapely.geometry.mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=_utc(product.start),
        properties={
            "start_datetime": _utc(product.start).isoformat(),
            "end_datetime": _utc(product.stop).isoformat(),
            "platform": f"sentinel-{product.mission[1:].lower()}",
            "constellation": "sentinel-1",
            "instruments": ["c-sar"],
            **(properties or {}),
        },
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    proj.code = f"EPSG:{epsg}" if epsg else None
    proj.wkt2 = CRS.from_user_input(crs).to_wkt()  # pyproj writes WKT2 (2019); rasterio's default is WKT1
    proj.shape = list(shape)
    proj.transform = list(transform)[:6]
    proj.bbox = list(bounds)
    folder = str(item_path).rstrip("/").rsplit("/", 1)[0] if is_url(item_path) else Path(item_path).parent
    _add_assets(item, outputs, folder)
    source = str(scene_path) if is_url(scene_path) else Path(scene_path).resolve().as_uri()
    item.add_link(pystac.Link(rel="derived_from", target=source,
                              media_type=pystac.MediaType.GEOTIFF, title="input scene"))
    return item


def _add_assets(item: pystac.Item, outputs: dict[str, Path | None], folder: Path | str) -> None:
    def href(path: Path) -> str:
        if is_url(folder):  # object storage: relative to the Item's key prefix
            return "./" + str(path).removeprefix(str(folder).rstrip("/") + "/")
        return "./" + Path(path).resolve().relative_to(folder.resolve()).as_posix()

    classes = pystac.Asset(href(outputs["class_map"]), title="sea / ice / land classes",
                           media_type=pystac.MediaType.COG, roles=["data"])
    item.add_asset("class_map", classes)
    ext = ClassificationExtension.ext(classes, add_if_missing=True)
    ext.classes = [
        Classification.create(value=code, name=name, description=name, color_hint="%02X%02X%02X" % CLASS_COLOURS[code])
        for code, name in CLASS_NAMES.items()
    ] + [Classification.create(value=NO_LABEL, name="nodata", description="no data", nodata=True)]
    if outputs.get("probabilities"):
        item.add_asset("probabilities", pystac.Asset(
            href(outputs["probabilities"]), title="class probabilities (uint8, p x 254, 255 nodata; CF scale_factor; class, y, x)",
            media_type=ZARR_MEDIA_TYPE, roles=["data"]))
    for key, title in (("lines", "coastline, ice edge and calving fronts (layers)"), ("icebergs", "iceberg centroids")):
        if outputs.get(key):
            item.add_asset(key, pystac.Asset(href(outputs[key]), title=title, media_type=GEOPACKAGE_MEDIA_TYPE,
                                             roles=["data"]))
    if outputs.get("quicklook"):
        item.add_asset("quicklook", pystac.Asset(href(outputs["quicklook"]), title="quicklook",
                                                 media_type=pystac.MediaType.PNG, roles=["overview", "visual"]))


def write_item(item: pystac.Item, path: str | Path) -> Path:
    """Write ``item`` as JSON at ``path`` atomically (hrefs kept as given, no self link)."""
    path = as_path(path)
    with atomic_path(path) as tmp, open_binary(tmp, "wb") as fh:
        fh.write(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2).encode())
    return path


def read_scene_hrefs(path: str | Path) -> list[tuple[str, str]]:
    """``(item id, absolute scene href)`` of every Item of a STAC ItemCollection, Catalog, Collection or Item file.

    The scene asset is the one keyed ``data``/``scene``/``image``, else the first GeoTIFF/COG asset.
    Raises :class:`SceneError` when the file is not STAC or an Item has no scene asset.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        if document.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_file(str(path)))
        else:
            stac = pystac.read_file(str(path))
            items = [stac] if isinstance(stac, pystac.Item) else list(stac.get_items(recursive=True))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pystac.STACError) as err:
        raise SceneError(path, f"not a readable STAC ItemCollection, Catalog, Collection or Item ({err})") from None
    out = []
    for item in items:
        asset = scene_asset(item)
        if asset is None:
            raise SceneError(path, f"STAC Item {item.id!r} has no GeoTIFF scene asset (keys: {', '.join(item.assets)})")
        out.append((item.id, _absolute(asset.get_absolute_href() or asset.href, path.parent)))
    return out


def _absolute(href: str, base: Path) -> str:
    """``href`` made absolute: URLs stay, ``file://`` URIs become paths, relative paths join ``base``."""
    if href.startswith("file://"):
        return href.removeprefix("file://")
    if "://" in href or Path(href).is_absolute():
        return href
    return str((base / href).resolve())


def scene_asset(item: pystac.Item) -> pystac.Asset | None:
    """The asset of ``item`` holding the scene: keyed ``data``/``scene``/``image``, else the first GeoTIFF; or None."""
    for key in ("data", "scene", "image"):
        if key in item.assets:
            return item.assets[key]
    for asset in item.assets.values():
        if asset.media_type in SCENE_MEDIA_TYPES or asset.href.lower().endswith((".tif", ".tiff")):
            return asset
    return None
