"""Export models to ONNX, torch.export's ExportedProgram or TorchScript, checked against the eager model.

From the command line (every registered model; ``--img-size``/``--batch`` set the checked input)::

    python -m timm_metalayers.export --model metalayers_resnet50 --pretrained --format onnx --output resnet50.onnx

From Python::

    report = export_model(model.eval(), 'onnx', 'model.onnx', img_size=224, dynamic_batch=True)
    print(report.summary())    # onnxruntime vs eager on inputs ...: largest difference 4.2e-07 (relative 1.1e-07)

The ONNX and torch.export formats come from one ``torch.export`` trace (:func:`export_formats` writes both).
Only models in eval mode export: regularisers are identities there; in training mode the error names them.
ONNX needs ``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install "timm-metalayers[export]"``), imported
only when an ONNX file is written. Modules: :mod:`.core` (the library), :mod:`.cli` (the command).
"""
from .core import (DEFAULT_RTOL, FORMATS, ExportParityError, ExportReport, active_random_layers, check_output_name,
                   export_formats, export_model, model_input_size, require_onnx)

__all__ = ['FORMATS', 'DEFAULT_RTOL', 'ExportReport', 'ExportParityError', 'export_model', 'export_formats',
           'model_input_size', 'active_random_layers', 'require_onnx', 'check_output_name']
