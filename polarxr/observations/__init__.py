"""Observations for time series, from class maps and probabilities, chunk by chunk.

- :mod:`~polarxr.observations.boundaries`: coastline, ice edge and calving fronts as lines (marching squares
  per block, joined across block borders);
- :mod:`~polarxr.observations.icebergs`: small ice objects surrounded by sea, labelled across blocks;
- :mod:`~polarxr.observations.fronts`: front positions by the box method, ice-edge positions along transects;
- :mod:`~polarxr.observations.distance`: the mean distance error (CaFFe) between two sets of lines.
"""
