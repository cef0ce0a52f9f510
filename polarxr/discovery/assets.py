"""Scene assets of discovered items as local files: local paths and ``file://`` as they are, URLs fetched.

A URL with any other scheme (``s3://``, ``gs://``, ``https://``, ...) is copied with fsspec into a cache
folder, under the product's name so the pipeline can read the acquisition from it, once: a cached copy
of the same size is reused. The copy is written under a temporary name and renamed, so a killed
download never leaves a half file that looks complete. ``s3://`` needs ``s3fs`` (credentials and
endpoint as boto reads them: environment, ``~/.aws``; ``AWS_ENDPOINT_URL`` for MinIO and the like).
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import pystac

from polarxr.discovery.stac_api import DiscoveryError
from polarxr.io import atomic_path


def scene_href(item: pystac.Item) -> str:
    """The href of ``item``'s scene asset; a relative one resolved against the item's self link.

    Raises :class:`DiscoveryError` naming the item when it has no scene asset (a GeoTIFF, or keyed
    ``data``/``scene``/``image``).
    """
    from polarxr.stac import scene_asset

    asset = scene_asset(item)
    if asset is None:
        raise DiscoveryError(item.id, f"STAC item has no scene asset (a GeoTIFF, or keyed data/scene/image; "
                                      f"assets: {', '.join(item.assets) or 'none'})")
    href = asset.href
    if "://" in href or Path(href).is_absolute():
        # pystac would join an absolute path onto the API's URL (the item's self link): keep it a path
        return href
    return asset.get_absolute_href() or href


def is_local(href: str) -> bool:
    """Whether ``href`` is a local path or a ``file://`` URI."""
    return "://" not in href or href.startswith("file://")


def local_path(href: str) -> Path:
    """The local path of a plain path or a ``file://`` URI (percent-escapes decoded)."""
    if href.startswith("file://"):
        parsed = urlparse(href)
        return Path(url2pathname(unquote(parsed.path)))
    return Path(href)


def resolve_scene(href: str, cache_dir: str | Path, name: str | None = None) -> Path:
    """A local file holding the scene at ``href``: the file itself when local, else a copy in ``cache_dir``.

    ``name``: file name of the copy (default the URL's last path part). Raises :class:`DiscoveryError`
    naming ``href`` when the scheme needs a missing package (``s3fs`` for ``s3://``) or the copy fails.
    """
    if is_local(href):
        return local_path(href)
    import fsspec

    target = Path(cache_dir) / (name or PurePosixPath(urlparse(href).path).name or "scene")
    try:
        fs, remote = fsspec.core.url_to_fs(href)
    except ImportError as err:
        raise DiscoveryError(href, f"reading {urlparse(href).scheme}:// assets needs another package "
                                   f"({' '.join(str(err).split())[:200]})") from None
    except ValueError as err:
        raise DiscoveryError(href, f"unsupported asset URL ({err})") from None
    try:
        size = fs.size(remote)
        if target.exists() and size is not None and target.stat().st_size == size:
            return target
        with atomic_path(target) as tmp, fs.open(remote, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    except FileNotFoundError:
        raise DiscoveryError(href, "cannot copy the scene asset: no such file or object") from None
    except (OSError, ValueError) as err:  # fsspec maps denied access and network errors to OSError
        raise DiscoveryError(href, f"cannot copy the scene asset ({' '.join(str(err).split())[:200] or type(err).__name__})") from None
    return target
