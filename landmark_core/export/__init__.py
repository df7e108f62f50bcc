"""Export: the exported module with the decision inside, TorchScript and ONNX writers, signing, the
round-trip check and the zip bundle."""
