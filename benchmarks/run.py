"""Run every benchmark in turn (``make bench``); figures are merged into benchmarks/results.json."""

from __future__ import annotations

from benchmarks import (
    bench_folder,
    bench_inference,
    bench_lung_crop,
    bench_metrics,
    bench_prepare,
    bench_rle,
    bench_rle_strips,
    bench_slides,
    bench_threshold_search,
    bench_trainer,
)


def main() -> None:
    benches = (
        bench_rle,
        bench_rle_strips,
        bench_metrics,
        bench_threshold_search,
        bench_prepare,
        bench_trainer,
        bench_slides,
        bench_lung_crop,
        bench_folder,
    )
    for bench in (*benches, bench_inference):
        bench.main()


if __name__ == "__main__":
    main()
