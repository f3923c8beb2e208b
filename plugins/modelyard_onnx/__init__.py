"""The ONNX Runtime GenAI backend (being written: see issue 5)."""
