"""LIX: distillation of an RGB + geometry teacher into an RGB-only segmentation student."""

import os

# Intel MKL (torch's CPU matmul) may pick a different code path, and so round differently,
# depending on the memory alignment of its operands: the same run gave other losses from the
# 4th digit on in a `dvc repro` than on the command line, because the heap was laid out otherwise
# (measured on LIX, whose ARFD is matmul-heavy). "AUTO,STRICT" (MKL's conditional numerical
# reproducibility) keeps the best instruction set and makes the results independent of alignment,
# at no measurable cost (a 1024x512 @ 512x1024 sgemm: 6.49 vs 6.44 ms; COMPATIBLE: 30.6 ms). Read
# when MKL first runs, so set on importing the package; a value the user set wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
