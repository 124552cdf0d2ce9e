"""Each dataset's label space: the class names of its train ids, in id order, and their colours.

The readers map their native labels onto these train ids and import their tables from here; the
previews, the cross-dataset class maps and the report need only the names and colours. Keeping the
tables out of the readers means those users import no reader, so an edit of a reader reruns that
dataset's preparation only (see pipeline/datasets.py). Colours are (r, g, b) uint8 triples.
"""

from __future__ import annotations

RGB = tuple[int, int, int]

# --- KITTI Semantics: the 19 Cityscapes train ids -----------------------------------------------
KITTI_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# Cityscapes label id of each train id above.
CITYSCAPES_IDS: tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
# Cityscapes colours by label id (for semantic_rgb); ids not listed are black.
CITYSCAPES_COLORS: dict[int, RGB] = {
    4: (111, 74, 0), 5: (81, 0, 81),  # static, dynamic (void: street clutter, ignored in training)
    7: (128, 64, 128), 8: (244, 35, 232), 11: (70, 70, 70), 12: (102, 102, 156), 13: (190, 153, 153),
    17: (153, 153, 153), 19: (250, 170, 30), 20: (220, 220, 0), 21: (107, 142, 35), 22: (152, 251, 152),
    23: (70, 130, 180), 24: (220, 20, 60), 25: (255, 0, 0), 26: (0, 0, 142), 27: (0, 0, 70),
    28: (0, 60, 100), 31: (0, 80, 100), 32: (0, 0, 230), 33: (119, 11, 32),
}

# --- Virtual KITTI 2: its categories, matched by name in each sequence's colors.txt -------------
VKITTI2_CLASSES: tuple[str, ...] = (
    "Terrain", "Sky", "Tree", "Vegetation", "Building", "Road", "GuardRail", "TrafficSign", "TrafficLight",
    "Pole", "Misc", "Truck", "Car", "Van",
)
# The official colors.txt, in its own order ("Undefined" has no train id: it is ignored).
VKITTI2_COLORS: dict[str, RGB] = {
    "Terrain": (210, 0, 200), "Sky": (90, 200, 255), "Tree": (0, 199, 0), "Vegetation": (90, 240, 0),
    "Building": (140, 140, 140), "Road": (100, 60, 100), "GuardRail": (250, 100, 255),
    "TrafficSign": (255, 255, 0), "TrafficLight": (200, 200, 0), "Pole": (255, 130, 0), "Misc": (80, 80, 80),
    "Truck": (160, 60, 60), "Car": (255, 127, 80), "Van": (0, 139, 139), "Undefined": (0, 0, 0),
}

# --- nuImages: the devkit's categories grouped into ten classes ----------------------------------
NUIMAGES_CLASSES: tuple[str, ...] = (
    "background", "driveable_surface", "car", "truck", "bus", "pedestrian", "cycle", "barrier", "traffic_cone",
    "other_object",
)
# The devkit's colour (nuscenes.utils.color_map) of a representative category of each class;
# background (unannotated) black.
NUIMAGES_COLORS: tuple[RGB, ...] = (
    (0, 0, 0), (0, 207, 191), (255, 158, 0), (255, 99, 71), (255, 69, 0), (0, 0, 230), (220, 20, 60),
    (112, 128, 144), (47, 79, 79), (210, 105, 30),
)

# --- By dataset ------------------------------------------------------------------------------------
# The class names of each dataset's train ids (as the shards record them).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "vkitti2": VKITTI2_CLASSES,
    "kitti": KITTI_CLASSES,
    "nuimages": NUIMAGES_CLASSES,
}
# The colour of each train id, in CLASS_NAMES order: the one each dataset's own tools draw it in.
CLASS_COLORS: dict[str, tuple[RGB, ...]] = {
    "vkitti2": tuple(VKITTI2_COLORS[name] for name in VKITTI2_CLASSES),
    "kitti": tuple(CITYSCAPES_COLORS[cid] for cid in CITYSCAPES_IDS),
    "nuimages": NUIMAGES_COLORS,
}
