"""Discovery of new Sentinel-1 acquisitions through a STAC API.

:mod:`polarxr.discovery.stac_api` searches an API with pystac-client (following its paging) for
Sentinel-1 GRD items over a region, since a time, in one instrument mode; :mod:`polarxr.discovery.state`
remembers, beside the run ledger, which items a ``polarxr process --stac-api`` has already seen, so each
poll hands on only new ones; :mod:`polarxr.discovery.assets` turns an item's scene asset (a local path,
``file://`` or any fsspec URL such as ``s3://``) into a local file the pipeline reads.
"""

from polarxr.discovery.stac_api import DiscoveryError, SearchFilter, SearchResult, search_items, write_item_collection

__all__ = ["DiscoveryError", "SearchFilter", "SearchResult", "search_items", "write_item_collection"]
