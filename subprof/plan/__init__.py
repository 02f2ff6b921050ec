"""Planning without torch: the analytic memory model, its calibration, the throughput model and the planner.

Nothing in this package imports torch, transformers, pandas or plotly (a test imports it in a fresh interpreter and
checks), so `subprof plan` and `subprof estimate` answer in well under a second on any machine.
"""
