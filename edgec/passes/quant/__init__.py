"""Quantization passes over ONNX/QONNX models (`--quantize SPEC`) and QDQ ingestion."""
