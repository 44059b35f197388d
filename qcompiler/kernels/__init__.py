"""Integer CPU kernels: the VNNI tensor intrinsic, kernel computes and their default schedules."""
