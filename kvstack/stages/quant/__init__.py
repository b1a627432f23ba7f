"""Quantization stages (family ``quantize``): rows replaced by codes.

Method modules (listed in ``kvstack.stages.STAGE_MODULES``): ``uniform`` (int8, int4, int3,
int2), ``kivi``, ``kvquant``, ``cq``, ``gear``. Shared helpers: ``calibration`` (calibrated
codebooks and the stage base that loads them), ``codebook`` (k-means levels and centroids),
``nuq`` (non-uniform codes), ``sparse`` (outliers kept beside the codes), ``sink`` (the first
rows kept in fp16), ``rope`` (keys stored before RoPE). The packed-code containers themselves
are the storage layer, ``kvstack.rows``. Importing this package imports none of them.
"""
