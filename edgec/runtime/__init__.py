"""Running built designs: the hls4ml C simulation library."""
