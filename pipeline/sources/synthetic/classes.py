"""Internal class ids of the synthetic renderer and their names.

Each dataset writer maps these to its own label encoding (vKITTI2 colours, Cityscapes
ids, nuImages categories); see the ``*_FROM_INTERNAL`` tables in the writers.
"""

from __future__ import annotations

import enum


class C(enum.IntEnum):
    SKY = 0
    ROAD = 1
    LANE_MARKING = 2
    SIDEWALK = 3
    CURB = 4
    TERRAIN = 5
    BUILDING = 6
    WALL = 7
    FENCE = 8
    POLE = 9
    TRAFFIC_SIGN = 10
    TRAFFIC_LIGHT = 11
    VEGETATION = 12
    TREE = 13
    CAR = 14
    VAN = 15
    TRUCK = 16


N_INTERNAL = len(C)
