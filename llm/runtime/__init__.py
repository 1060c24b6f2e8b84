"""The machine a run is on: keeping freed host memory for XLA:CPU's buffers, and the devices' peak FLOP/s."""

from llm.runtime.hardware import peak_flops
from llm.runtime.host_memory import keep_freed_host_memory

__all__ = ["keep_freed_host_memory", "peak_flops"]
