"""The model and its contract on the device: read an artifact, check it, preprocess frames, run a backend.

    classifier = Classifier.open(Path("mobilenet_v2.onnx"))      # artifact + backend, checked and warmed up
    prediction = classifier.classify(frame_bgr)                  # label, index, score, top-k, stage ms

``artifact`` reads the metadata and checks it against the graph, ``preprocess`` holds the pure
resize/crop functions, ``backends`` the one small protocol (onnxruntime, TorchScript) picked by suffix.
"""
