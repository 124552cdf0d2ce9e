"""Internal class ids of the synthetic renderer and their names.

Each dataset writer maps these to its own label encoding (vKITTI2 colours, Cityscapes
ids, nuImages categories); see the ``*_FROM_INTERNAL`` tables in the writers. Classes are
per *pixel*; what an instance is (a bicycle with its rider, a bendy bus section, a rack
with the bicycles parked in it) is recorded per object id in ``Scene.objects``.
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
    PERSON = 17  # a pedestrian (adult or child)
    RIDER = 18  # the person on a bicycle or motorcycle
    BICYCLE = 19
    MOTORCYCLE = 20
    BUS = 21
    TRAM = 22  # KITTI's (Cityscapes') "train": vehicles on rails
    RAIL = 23  # tram rails set in the road surface (road, as in Cityscapes)
    BARRIER = 24  # temporary traffic barriers
    TRAFFIC_CONE = 25
    DEBRIS = 26  # trash bags, bins, loose things too big to drive over
    PUSHABLE = 27  # wheeled bins, carts
    BICYCLE_RACK = 28


N_INTERNAL = len(C)
