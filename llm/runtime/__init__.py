"""The machine a run is on: keeping freed host memory for XLA:CPU's buffers, the devices' peak FLOP/s and the CPU's
model and features, and handling the signals the process receives."""

from llm.runtime.hardware import cpu_processor, peak_flops
from llm.runtime.host_memory import keep_freed_host_memory
from llm.runtime.signals import handling

__all__ = ["cpu_processor", "handling", "keep_freed_host_memory", "peak_flops"]
