"""Benchmarks for facekd's performance targets (issues 8 and 13): ``python -m bench``; see bench/README.md.

One module per target; each has ``run(quick=False) -> list[common.Result]`` and prints its lines.
"""

# Run order of ``python -m bench``: cheap and independent first, the whole pipeline last.
BENCHES = ("verification", "ijb_scoring", "export_latency", "data_pipeline", "train_step", "distill_cost",
           "cpu_path", "gpu_train", "int8_latency", "onnx_teacher", "pipeline_wall", "stability")
