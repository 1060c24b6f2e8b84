"""Pallas kernels.

flash_attention  the public flash-attention entry point (custom_vjp, padding, per-backend defaults);
flash_common     what its lowerings share: static options, block ranges (block skipping), masks, logits;
flash_triton     GPU-style kernels: Triton on GPU, Pallas' interpreter on CPU;
flash_tpu        Mosaic (TPU) kernels.
"""
