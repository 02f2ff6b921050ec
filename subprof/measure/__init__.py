"""Measuring a training configuration: a pure-data case, the runner (one subprocess per case, timeout, resume), the
backends (trace on fake tensors, real CPU, real CUDA), the model builder, reference optimizers and projection
timing."""
