"""Sub-quadratic sequence mixers' cores, each in three forms (recurrent for decoding, parallel, chunked for
training): gated linear attention (gla.py: linear attention, GLA, RetNet, Mamba-2's SSD; its Pallas kernel is
llm/kernels/linear_attention.py) and the delta rule (delta.py: DeltaNet, Gated DeltaNet)."""

from llm.kernels.linear_attention import gla_pallas
from llm.ops.mixers.delta import delta_chunked, delta_mixing, delta_parallel, delta_recurrent
from llm.ops.mixers.gla import gla_chunked, gla_mixing, gla_parallel, gla_recurrent

__all__ = ["delta_chunked", "delta_mixing", "delta_parallel", "delta_recurrent", "gla_chunked", "gla_mixing",
           "gla_pallas", "gla_parallel", "gla_recurrent"]
