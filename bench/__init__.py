"""jobcompd's benchmarks: ``bench_parse.py`` (parser/encoder) and ``run_bench.py`` (end to end)."""
