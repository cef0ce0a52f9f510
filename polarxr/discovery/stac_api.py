"""Searching a STAC API for Sentinel-1 GRD acquisitions (``polarxr discover``).

The search goes through pystac-client's ``/search`` (the STAC API Item Search), which follows the
API's ``next`` links page by page. Collection, area (``bbox`` or a region's polygon as
``intersects``) and time (``datetime=SINCE/..``) are sent to the server; every returned item is checked
again here, together with the conditions STAC APIs cannot all express without the ``query``/``filter``
extensions (instrument mode, GRD product type), because a server that ignores a parameter must not
hand on scenes outside the request. Coordinates are WGS84 longitude/latitude (degrees), times UTC.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pystac
import shapely
import shapely.geometry

from polarxr.errors import PolarxrError
from polarxr.io import atomic_path

#: Collection searched when none is given: the Sentinel-1 GRD collection of the Copernicus Data Space
#: Ecosystem's and Microsoft Planetary Computer's STAC APIs.
DEFAULT_COLLECTION = "sentinel-1-grd"
#: Items asked for per page (APIs cap it at their own maximum; paging fetches the rest).
DEFAULT_PAGE_SIZE = 100
#: Seconds to wait for the API to answer each request.
DEFAULT_TIMEOUT_S = 20.0
#: Seconds to wait for a connection (a host that drops packets must not hold a poll for long).
CONNECT_TIMEOUT_S = 5.0
MODES = ("EW", "IW", "SM", "WV")
_PRODUCT_TYPE = re.compile(r"^S1[A-D]_(?P<mode>EW|IW|SM|WV|S[1-6])_(?P<type>[A-Z]{3})")


class DiscoveryError(PolarxrError):
    """A STAC API that cannot be searched (unreachable, not a STAC API, unknown collection, bad answer)."""


@dataclass(frozen=True)
class SearchFilter:
    """What to search for: a collection, an area (WGS84), acquisitions since a UTC time, an instrument mode.

    ``bbox``: (west, south, east, north) in degrees. ``region``: a WGS84 polygon (sent as ``intersects``;
    takes precedence over ``bbox``). ``since``: timezone-aware UTC; items acquired at or after it.
    ``mode``: ``EW``, ``IW``, ``SM`` or ``WV`` (None: any).
    """

    collection: str = DEFAULT_COLLECTION
    bbox: tuple[float, float, float, float] | None = None
    region: shapely.Geometry | None = None
    since: datetime | None = None
    mode: str | None = None

    @classmethod
    def from_options(cls, collection: str = DEFAULT_COLLECTION, region: str | Path | None = None,
                     bbox: Sequence[float] | None = None, since: str | datetime | None = None,
                     mode: str | None = None) -> SearchFilter:
        """Build a filter from command-line style options: a region file, a bbox, an ISO 8601 time, a mode.

        Raises ``ValueError`` for a malformed bbox, time or mode and both a region and a bbox;
        :class:`~polarxr.region.RegionError` for an unusable region file.
        """
        if region is not None and bbox is not None:
            raise ValueError("give either a region file or a bbox, not both")
        geometry = None
        if region is not None:
            from polarxr.region import WGS84, read_region

            geometry = read_region(region, crs=WGS84).geometry.iloc[0]
        return cls(collection=collection, bbox=parse_bbox(bbox) if bbox is not None else None, region=geometry,
                   since=parse_since(since) if since is not None else None, mode=parse_mode(mode) if mode else None)

    def area(self) -> shapely.Geometry | None:
        """The search area as a WGS84 geometry (None: anywhere)."""
        if self.region is not None:
            return self.region
        return shapely.box(*self.bbox) if self.bbox is not None else None

    def parameters(self, page_size: int) -> dict:
        """Keyword arguments of :meth:`pystac_client.Client.search` for this filter."""
        params: dict = {"collections": [self.collection], "limit": page_size}
        if self.region is not None:
            params["intersects"] = shapely.geometry.mapping(self.region)
        elif self.bbox is not None:
            params["bbox"] = list(self.bbox)
        if self.since is not None:
            params["datetime"] = f"{self.since.strftime('%Y-%m-%dT%H:%M:%SZ')}/.."
        return params

    def rejects(self, item: pystac.Item) -> str | None:
        """Why ``item`` does not match (outside the area, too early, another mode, not GRD), or None."""
        name = _PRODUCT_TYPE.match(item.id)
        product_type = item.properties.get("sar:product_type") or (name["type"] if name else None)
        if product_type is not None and not str(product_type).upper().startswith("GRD"):
            return f"product type {product_type}, not GRD"
        if self.mode is not None:
            mode = item.properties.get("sar:instrument_mode") or (name["mode"] if name else None)
            if mode is None:
                return "no instrument mode (sar:instrument_mode) and not a Sentinel-1 product name"
            if str(mode).upper() != self.mode:
                return f"instrument mode {mode}, not {self.mode}"
        if self.since is not None:
            start = item_start(item)
            if start is None:
                return "no acquisition time"
            if start < self.since:
                return f"acquired {start.isoformat()}, before {self.since.isoformat()}"
        area = self.area()
        if area is not None:
            if item.geometry is None:
                return "no footprint (geometry)"
            if not shapely.geometry.shape(item.geometry).intersects(area):
                return "footprint outside the search area"
        return None


@dataclass
class SearchResult:
    """The items found (acquisition order), pages fetched, items the API returned, items rejected here."""

    url: str
    items: list[pystac.Item]
    pages: int = 0
    returned: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)


def parse_bbox(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees; ``ValueError`` unless 4 numbers with south < north in range."""
    if len(values) != 4:
        raise ValueError(f"a bbox is 4 numbers W S E N, got {len(values)}")
    west, south, east, north = (float(v) for v in values)
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90):
        raise ValueError(f"bbox {west:g} {south:g} {east:g} {north:g} is not W S E N in degrees "
                         "(longitudes -180..180, latitudes -90..90, south < north)")
    return west, south, east, north


def parse_since(text: str | datetime) -> datetime:
    """An ISO 8601 date or time as a timezone-aware UTC datetime (a time without zone is UTC)."""
    moment = text if isinstance(text, datetime) else None
    if moment is None:
        try:
            moment = datetime.fromisoformat(str(text).strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 date or time (e.g. 2018-01-16 or 2018-01-16T07:54:30Z)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_mode(text: str) -> str:
    """An instrument mode in upper case; ``ValueError`` unless one of :data:`MODES`."""
    mode = text.strip().upper()
    if mode not in MODES:
        raise ValueError(f"unknown instrument mode {text!r}; Sentinel-1 modes are {', '.join(MODES)}")
    return mode


def item_start(item: pystac.Item) -> datetime | None:
    """The item's acquisition (start) time in UTC: ``datetime``, else ``start_datetime``."""
    moment = item.datetime or item.common_metadata.start_datetime
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _reason(err: Exception, timeout_s: float) -> str:
    """A short cause for an error of requests/pystac-client (their messages nest several exceptions)."""
    text = str(err)
    status = getattr(err, "status_code", None)
    if status is not None:
        try:  # STAC APIs answer errors as {"code": ..., "description": ...}; web servers with HTML pages
            detail = json.loads(text).get("description") or ""
        except (ValueError, AttributeError):
            detail = ""
        return f"it answered HTTP {status}" + (f": {' '.join(str(detail).split())[:200]}" if detail else "")
    for needle, reason in (("Connection refused", "connection refused"),
                           ("timed out", f"no answer within {timeout_s:g} s"),
                           ("Timeout", f"no answer within {timeout_s:g} s"),
                           ("Name or service not known", "host name not found"),
                           ("Failed to resolve", "host name not found"),
                           ("No route to host", "no route to host")):
        if needle in text:
            return reason
    return " ".join(text.split())[:300] or type(err).__name__


def open_api(url: str, timeout_s: float = DEFAULT_TIMEOUT_S):
    """A :class:`pystac_client.Client` for the STAC API at ``url`` (its landing page read).

    A request waits ``timeout_s`` for an answer and at most :data:`CONNECT_TIMEOUT_S` for a connection;
    failed connections are retried once and failed reads once, so an unreachable API fails within seconds.
    Raises :class:`DiscoveryError` naming ``url`` when it is unreachable or not a STAC API.
    """
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO
    from pystac_client.warnings import NoConformsTo
    from urllib3 import Retry

    retry = Retry(total=2, connect=1, read=1, status=2, backoff_factor=0.2, allowed_methods=None,
                  status_forcelist=(429, 502, 503, 504), raise_on_status=False)
    timeout = (min(CONNECT_TIMEOUT_S, timeout_s), timeout_s)
    io = StacApiIO(timeout=timeout, max_retries=retry)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoConformsTo)  # reported below as "no Item Search"
            return Client.open(url, stac_io=io, timeout=timeout)
    except APIError as err:
        if getattr(err, "status_code", None) is not None:
            raise DiscoveryError(url, f"is not a STAC API landing page ({_reason(err, timeout_s)})") from None
        raise DiscoveryError(url, f"STAC API unreachable ({_reason(err, timeout_s)}); check the URL and that "
                                  "the server is running") from None
    except (pystac.STACError, ValueError, KeyError, TypeError) as err:
        raise DiscoveryError(url, f"is not a STAC API landing page ({' '.join(str(err).split())[:200]})") from None


def search_items(url: str, search: SearchFilter | None = None, page_size: int = DEFAULT_PAGE_SIZE,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> SearchResult:
    """Every Sentinel-1 GRD item of the STAC API at ``url`` matching ``search``, all pages followed.

    Items come in acquisition order (then id), each once. Raises :class:`DiscoveryError` naming ``url``
    when the API is unreachable, is not a STAC API with Item Search, lacks the collection, or fails mid-way.
    """
    from pystac_client.exceptions import APIError

    search = search or SearchFilter()
    client = open_api(url, timeout_s)
    if not client.conforms_to("ITEM_SEARCH"):
        raise DiscoveryError(url, "this STAC API does not offer Item Search (/search); polarxr needs it")
    try:
        found = client.get_collection(search.collection)  # None for a 404
    except APIError as err:
        raise DiscoveryError(url, f"cannot read collection {search.collection!r} ({_reason(err, timeout_s)})") from None
    except (pystac.STACError, ValueError, KeyError, TypeError) as err:
        raise DiscoveryError(url, f"collection {search.collection!r} is not valid STAC "
                                  f"({' '.join(str(err).split())[:200]})") from None
    if found is None:
        raise DiscoveryError(url, f"has no collection {search.collection!r}; choose one with --collection "
                                  f"({_collection_ids(client)})")
    result = SearchResult(url, [])
    seen: set[str] = set()
    try:
        for page in client.search(**search.parameters(page_size)).pages():
            result.pages += 1
            for item in page:
                result.returned += 1
                if item.id in seen:  # an offset-paged API repeats items when the catalogue grows mid-search
                    continue
                seen.add(item.id)
                if (why := search.rejects(item)) is not None:
                    result.rejected.append((item.id, why))
                else:
                    result.items.append(item)
    except APIError as err:
        raise DiscoveryError(url, f"search failed after {result.pages} page(s) ({_reason(err, timeout_s)})") from None
    except (pystac.STACError, ValueError, KeyError, TypeError) as err:
        raise DiscoveryError(url, f"returned an item that is not valid STAC ({' '.join(str(err).split())[:200]})") from None
    far_future = datetime.max.replace(tzinfo=UTC)
    result.items.sort(key=lambda i: (item_start(i) or far_future, i.id))
    return result


def _collection_ids(client) -> str:
    try:
        ids = sorted(c.id for c in client.get_collections())
    except Exception:  # only a hint for the message; the API already failed once
        return "its collections could not be listed"
    return "it has: " + (", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "") if ids else "none")


def write_item_collection(items: Sequence[pystac.Item], path: str | Path) -> Path:
    """Write ``items`` as a GeoJSON FeatureCollection (STAC ItemCollection) at ``path``, atomically."""
    path = Path(path)
    collection = pystac.ItemCollection(list(items))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection.to_dict(transform_hrefs=False), indent=1))
    return path
