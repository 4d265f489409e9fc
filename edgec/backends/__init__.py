"""Code generators: hls4ml for the FPGA fabric."""
