"""Incremental discovery for ``polarxr process --stac-api``: each poll hands on only items not seen before.

:func:`poll` searches the API (:func:`~polarxr.discovery.stac_api.search_items`), resolves the scene
asset of every item not in the discovery state (:mod:`polarxr.discovery.state`) to a local file
(:func:`~polarxr.discovery.assets.resolve_scene`), remembers those, and writes every item seen so far
as an ItemCollection with local hrefs: the inbox that :func:`polarxr.pipeline.process_inbox` reads.
The run ledger then keeps done scenes done and retries failed ones on ``--retry-failed``, as for any
inbox. An item whose asset cannot be resolved (no scene asset, a download that fails) is not
remembered: it is reported and tried again at the next poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pystac

from polarxr.discovery.assets import is_local, local_path, resolve_scene, scene_href
from polarxr.discovery.stac_api import (DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT_S, DiscoveryError, SearchFilter,
                                        SearchResult, search_items, write_item_collection)
from polarxr.discovery.state import DiscoveryState

#: Names beside the run ledger: the discovery state, the inbox of discovered items, the download cache.
STATE_NAME = "discovery.sqlite"
INBOX_NAME = "discovered-items.json"
DOWNLOADS_NAME = "downloads"


@dataclass
class PollResult:
    """One poll: the search, the items new in it (their scene assets local), those left for the next poll."""

    search: SearchResult
    new: list[pystac.Item]
    known: int
    inbox: Path
    unresolved: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what the poll found."""
        pages = f"{self.search.pages} page(s)"
        rejected = f", {len(self.search.rejected)} not matching" if self.search.rejected else ""
        line = (f"{self.search.url}: {len(self.search.items)} matching item(s) in {pages}{rejected}; "
                f"{len(self.new)} new, {self.known} seen before")
        return line + (f"; {len(self.unresolved)} left for the next poll" if self.unresolved else "")


def _copy_name(item: pystac.Item, href: str) -> str:
    """File name of a downloaded scene: the URL's, unless it does not carry the product name (then the id's)."""
    from polarxr.scenes import parse_product_name

    name = PurePosixPath(urlparse(href).path).name
    try:
        parse_product_name(name)
        return name
    except ValueError:
        return item.id + (PurePosixPath(name).suffix or ".tif")


def _with_local_scene(item: pystac.Item, path: Path) -> pystac.Item:
    """A copy of ``item`` whose scene asset is the absolute local ``path``."""
    from polarxr.stac import scene_asset

    local = item.clone()
    local.clear_links("self")
    scene_asset(local).href = str(Path(path).absolute())
    return local


def poll(url: str, search: SearchFilter, state_dir: str | Path, page_size: int = DEFAULT_PAGE_SIZE,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> PollResult:
    """Search ``url`` and hand on the items not seen before; write the inbox of all items seen.

    ``state_dir``: folder of the discovery state (``discovery.sqlite``), the inbox
    (``discovered-items.json``) and downloaded scenes (``downloads/``); polarxr process uses the
    ledger's folder. Raises :class:`DiscoveryError` when the API cannot be searched.
    """
    state_dir = Path(state_dir)
    found = search_items(url, search, page_size=page_size, timeout_s=timeout_s)
    new, unresolved = [], []
    with DiscoveryState(state_dir / STATE_NAME) as state:
        seen = state.seen_ids(url, search.collection)
        for item in found.items:
            if item.id in seen:
                continue
            try:
                href = scene_href(item)
                path = (local_path(href) if is_local(href)
                        else resolve_scene(href, state_dir / DOWNLOADS_NAME, _copy_name(item, href)))
            except DiscoveryError as err:
                unresolved.append((item.id, str(err)))
                continue
            local = _with_local_scene(item, path)
            state.add(url, search.collection, local, href, path)
            new.append(local)
        state.record_poll(url, search.collection, found.pages, len(found.items), len(new))
        remembered = state.items(url, search.collection)
    inbox = write_item_collection(remembered, state_dir / INBOX_NAME)
    return PollResult(found, new, len(found.items) - len(new) - len(unresolved), inbox, unresolved)
