"""Ingestion of Sentinel-1 GRD products as delivered (``.SAFE`` folders, ``.zip``) into geocoded scenes.

``safe`` opens and checks products, ``radiometry`` calibrates and removes thermal noise, ``geocode`` maps
them onto a target grid chunk by chunk, ``products`` writes the COG and STAC Item, ``synthetic`` writes
products in the real SAFE layout for tests and benchmarks.
"""

from polarxr.ingest.geocode import DEFAULT_CRS, DEFAULT_RESOLUTION, TargetGrid, geocode, target_grid
from polarxr.ingest.products import IngestResult, ingest_product, ingest_products, ingested
from polarxr.ingest.safe import GrdProduct, is_product, open_product

__all__ = ["DEFAULT_CRS", "DEFAULT_RESOLUTION", "GrdProduct", "IngestResult", "TargetGrid", "geocode",
           "ingest_product", "ingest_products", "ingested", "is_product", "open_product", "target_grid"]
