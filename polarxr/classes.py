"""Label codes shared by charts, the training cube, models and outputs.

The codes are those of the ExtremeEarth sample solution (ysbecca/extremeearth-polar), so that
patch sets made by it keep their meaning: land 0, water/sea 1, ice 2, and 255 for "no label".
"""

from __future__ import annotations

LAND: int = 0
WATER: int = 1
ICE: int = 2
NO_LABEL: int = 255

#: ``poly_type`` letter of an ice chart -> label code.
CLASS_CODES: dict[str, int] = {"L": LAND, "W": WATER, "I": ICE}
#: label code -> human name, in code order.
CLASS_NAMES: dict[int, str] = {LAND: "land", WATER: "sea", ICE: "ice"}
N_CLASSES: int = len(CLASS_NAMES)
#: RGB colours (0-255) for quicklooks and legends.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    LAND: (139, 115, 85),
    WATER: (20, 60, 140),
    ICE: (235, 245, 255),
    NO_LABEL: (0, 0, 0),
}
