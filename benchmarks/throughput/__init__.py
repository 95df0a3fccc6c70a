"""The parts of `benchmarks/bench_throughput.py`, one purpose a module.

- `machine`: CPU model, cores, load, package versions, peak RSS;
- `keras_peers`: the Keras peers (our Distiller, keras.distillation,
  teacher inference and the student step alone);
- `torch_peers`: the PyTorch peers (RepDistiller's loop,
  `benchmarks/torch_reference.py`);
- `timing`: the synthetic batch, building and warming up peers,
  round-robin timing;
- `ratios`: the comparisons and targets of `docs/bench_throughput.md`;
- `profiles`: op self-times (tf.profiler, torch.profiler);
- `report`: the text table, the JSON file, parameter counts, the plot.

The modules read the flags `bench_throughput.py` defines (`absl.flags`);
the script's folder is on `sys.path` when it runs, so they import as
`throughput.<module>` and the reference as `torch_reference`.
"""
