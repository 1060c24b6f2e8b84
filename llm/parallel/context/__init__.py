"""Context parallelism: every sequence split along its length over the mesh's `context` axis.

layout.py: where the tokens go (contiguous or balanced chunks), the run's settings, a batch reordered into the layout.
attention.py: attention across the split, per device under shard_map: ring (ppermute) or all-gather.
"""

CONTEXT_STRATEGIES = ("ring", "all_gather")  # how attention reaches the keys on other devices (attention.py)
