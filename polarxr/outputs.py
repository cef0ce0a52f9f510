"""Names of the per-scene outputs: ``<scene><suffix>`` (class map, probabilities, quicklook)."""

#: Class map COG: uint8 L=0 W=1 I=2, 255 nodata.
CLASS_MAP_SUFFIX = "_class.tif"
#: Class probabilities, a Zarr store (class, y, x).
PROBABILITIES_SUFFIX = "_probability.zarr"
#: PNG quicklook of the segmentation beside the scene.
QUICKLOOK_SUFFIX = "_quicklook.png"
