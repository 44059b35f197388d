"""qcompiler's Relax passes, one pipeline stage per module (imported as `qcompiler.passes`).

The quantization stages plug in between import and lowering (see qcompiler/build.py):
`annotate` (which ops, which observers), `calibrate` (statistics over real samples) and
`realize` (int8 kernels with int32 accumulation), with what they share (QConfig, observers,
graph views) beside them.
"""
