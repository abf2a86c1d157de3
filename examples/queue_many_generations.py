"""The remote-VAE blog's "queueing" use case on latentq: keep generating while several workers decode.

The blog runs one decode thread that takes latents off a local queue.Queue
and calls remote_decode for each, one at a time. With latentq the queue is
Redis: the producer submits each latent the moment it is generated (no
waiting), several latentq workers take them and decode in batches, and one
collector thread saves each image as soon as its job ends.

    python examples/queue_many_generations.py --workers 2 --count 8     # own stack, tiny random SD 1.5
    python examples/queue_many_generations.py --redis-url redis://host:6379/0 --model sd15
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch
from _common import add_flags, deployment


def generate(index: int, size: int, step_ms: float) -> torch.Tensor:
    """A stand-in for ``pipe(prompt, output_type="latent")``: some work, then a latent."""
    time.sleep(step_ms / 1000)
    return torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(index))


def main(argv: list[str] | None = None) -> int:
    parser = add_flags(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    parser.set_defaults(workers=2)
    parser.add_argument("--model", default="sd15", help="an SD-style model (4 latent channels; default sd15)")
    parser.add_argument("--count", type=int, default=8, help="generations (default 8)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--step-ms", type=float, default=50.0, help="simulated generation time per image")
    parser.add_argument("--out", type=Path, help="directory for the PNGs (default: a temporary one)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="latentq-queue-"))
    out.mkdir(parents=True, exist_ok=True)

    with deployment(args, [args.model]) as where:
        from latentq import Client, HttpClient

        client = Client(where.redis_url) if where.redis_url else HttpClient(where.api_url)
        handed: queue.Queue = queue.Queue()
        decoded_by: Counter = Counter()
        failures: list[str] = []

        def collect() -> None:
            """The blog's decode thread, except the decoding happens on the latentq workers."""
            while (item := handed.get()) is not None:
                index, job = item
                try:
                    job.wait(300)
                    info = job.info()
                    (out / f"{index:03d}.png").write_bytes(job.read())
                    decoded_by[info.worker] += 1
                    print(f"  image {index} decoded by {info.worker} (in a batch of {info.batch_size})", flush=True)
                except Exception as exc:  # report and go on: one failed job does not stop the others
                    failures.append(f"image {index}: {exc}")
                finally:
                    handed.task_done()

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        started = time.perf_counter()
        for index in range(args.count):
            latent = generate(index, args.size, args.step_ms)
            handed.put((index, client.submit(latent, model=args.model, scaling_factor=0.18215)))
            print(f"generated {index}, submitted; generating the next one", flush=True)
        generating = time.perf_counter() - started
        handed.join()
        handed.put(None)
        collector.join()
        total = time.perf_counter() - started
        client.close()

    if failures:
        print("failed:", *failures, sep="\n  ")
        return 1
    print(f"{args.count} images generated in {generating:.2f} s and decoded by {len(decoded_by)} worker(s) "
          f"in {total:.2f} s in all; saved in {out}")  # fmt: skip
    for worker, count in sorted(decoded_by.items()):
        print(f"  {worker}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
