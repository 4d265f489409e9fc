"""Cost models of a lowered design: cycles, resources, energy, the CPU, PS-PL transfers and break-even
pruning ratios. They take the target (a ``Device``/``CpuSpec``) as input; every constant cites its source."""
