"""Speed of every way wavflow samples audio: `wavflow benchmark` (also `python -m wavflow.benchmark`; design.md
section 6).

    wavflow benchmark                                  # paper-size configs, random weights, CPU
    wavflow benchmark --quick --json out.json --plot out.png      # tiny configs: what CI runs
    wavflow benchmark --device cuda --dtype fp16 --ar-max 0.5     # GPU; AR rows at short lengths only
    wavflow benchmark --checkpoint waveglow=wg.pt wavenet=wn.pt student=st.pt
    wavflow benchmark --models waveglow,waveglow_nvidia --cpu-time   # only WaveGlow and NVIDIA's algorithm

Every model vocodes the same mel (examples/LJ002-0020.npy, tiled or cropped to each length) in one process, so
the ratios between rows hold on a noisy, shared machine. The package, one concern per module:

    entries.py    the rows: each way of sampling, how it is called, the precision it runs in
    settings.py   the command line's arguments, checked into one Settings before any model is built
    inputs.py     the mel every row vocodes; the models, loaded and prepared for inference
    measure.py    clocks (wall and CPU), FLOP counting, peak memory, the machine's peak (best backend)
    runner.py     the protocol: warm-up, round-robin timing, medians; `run`, the whole benchmark
    results.py    `Row`, what one row measured
    report.py     the table, the ratios, the JSON and the plot
    reference.py  NVIDIA's WaveGlow sampling algorithm on wavflow's weights (the waveglow_nvidia row)
    onnx_rows.py  the rows that run an ONNX export in onnxruntime

The command line (its parser, and printing and writing the results) is wavflow.commands.benchmark.
"""
