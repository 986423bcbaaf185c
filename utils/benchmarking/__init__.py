"""Speed measured: the benchmarks of the reader, a training step, the ensemble and the web app
(benchmarks.py), what bounds each training loop (loop_benchmark.py) and the GPU check's parts
(gpu_check.py)."""
