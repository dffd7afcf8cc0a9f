"""Products inside photos: a class-agnostic detector (torchvision FCOS over EfficientNet-Lite), trained on
synthetic composites of the catalogue; each box named by the classifier; counts per product.

Stages: `boxes` (types), `annotations` (VOC / COCO / YOLO import), `synth` (composites), `model` and
`train` (the detector), `detector` and `tiling` (inference), `count` (recognise and count), `evaluate`
and `draw` (AP, count error, pictures), `onnx` (ONNX Runtime), `options` (tile modes and backends, without
torch) and `backends` (`open_detector`: a detector in the backend asked for).
"""
