"""Depth throughput: batched Depth Anything vs a naive per-image loop, and CREStereo frames/s.

Both Depth Anything paths run the same images through the same model in one process:
the naive loop preprocesses, runs and post-processes one image at a time; the batched path
groups equal-sized images into batches (one forward each, autocast on GPU). Without
downloaded weights the model is randomly initialised with the real architecture's config
(Depth-Anything-V2-Small: DINOv2-S backbone), which has the same cost per image.

    python benchmarks/depth_throughput.py --images 16 --batch 8
    python benchmarks/depth_throughput.py --device cuda --images 64 --batch 32   # on a GPU
    python benchmarks/depth_throughput.py --crestereo-frames 0 --json out.json     # also the figures as JSON
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def depth_anything_small(model_path: str | None):
    from transformers import (
        AutoModelForDepthEstimation,
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
    )

    if model_path:
        return AutoModelForDepthEstimation.from_pretrained(model_path, local_files_only=True)
    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                            image_size=518, patch_size=14, reshape_hidden_states=False,
                            out_indices=[3, 6, 9, 12])
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384, patch_size=14,
                              neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32)
    return DepthAnythingForDepthEstimation(cfg)


def timed(fn, sync):
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(144, 256), metavar=("H", "W"),
                    help="image size (default: the synthetic nuImages size)")
    ap.add_argument("--input-size", type=int, default=518)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-path", default=None, help="a local Depth Anything directory (else random weights)")
    ap.add_argument("--crestereo-frames", type=int, default=2)
    ap.add_argument("--crestereo-iters", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the figures as JSON (img/s, frames/s, the settings)")
    args = ap.parse_args()

    from pipeline.depth.crestereo_net import CREStereo, infer_disparity
    from pipeline.depth.depth_anything import DepthAnythingBackend

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    desc = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
        f"{torch.get_num_threads()} threads"
    print(f"device: {dev} ({desc})")

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (*args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    backend = DepthAnythingBackend(network=depth_anything_small(args.model_path), device=args.device,
                                   batch_size=args.batch, input_size=args.input_size)
    backend.raw(images[:2])  # warm-up (allocations, cuDNN autotune)
    t_naive = timed(lambda: [backend.raw([im]) for im in images], sync)
    t_batch = timed(lambda: backend.raw(images), sync)
    print(f"Depth Anything V2-S, {args.images} images {args.size[1]}x{args.size[0]} -> input side {args.input_size}")
    print(f"  naive per-image loop : {args.images / t_naive:8.2f} img/s")
    print(f"  batched (batch {args.batch:3d})   : {args.images / t_batch:8.2f} img/s")
    print(f"  speed-up batched/naive: {t_naive / t_batch:.2f}x")
    figures = {"device": str(dev), "machine": desc, "images": args.images, "batch": args.batch,
               "size": list(args.size), "input_size": args.input_size, "weights": args.model_path or "random",
               "autocast": dev.type == "cuda",  # DepthAnythingBackend.raw: bf16 (else fp16) on CUDA
               "naive_img_s": args.images / t_naive, "batched_img_s": args.images / t_batch}

    if args.crestereo_frames > 0:
        net = CREStereo().to(dev).eval()
        left = torch.rand(1, 3, 375, 1242, device=dev) * 255
        right = torch.roll(left, -20, dims=3)
        infer_disparity(net, left[..., :64, :128], right[..., :64, :128], iters=1)
        t = timed(lambda: [infer_disparity(net, left, right, iters=args.crestereo_iters)
                           for _ in range(args.crestereo_frames)], sync)
        print(f"CREStereo 1242x375, {args.crestereo_iters} iterations, two-pass recipe: "
              f"{args.crestereo_frames / t:.3f} frames/s")
        figures |= {"crestereo_frames_s": args.crestereo_frames / t, "crestereo_iters": args.crestereo_iters}
    if args.json:
        from pipeline.atomic import write_json

        write_json(args.json, figures)


if __name__ == "__main__":
    main()
