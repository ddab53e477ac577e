"""A merged model as ONNX, optionally with dynamic int8 weights, and a session that runs it.

``peft-tags export RUN DEST --format onnx [--quantize int8]`` writes ``DEST/onnx/model.onnx``
beside the merged transformers model; ``Tagger.load(DEST, backend="onnx")`` runs it with
onnxruntime. :class:`OnnxModel` is called like a transformers model (``input_ids``,
``attention_mask`` -> ``.logits``), so every task decodes its output with the same code as
the torch backend's.

Int8 is onnxruntime's dynamic quantisation: weights of the matrix multiplications stored as
int8 (in a 7-bit range, see :func:`export_onnx`) per output channel, activations quantised per
batch at run time. It is what suits a
CPU without a GPU: no calibration data, a 4x smaller file, integer kernels.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .errors import UserError

log = logging.getLogger("peft_tags.onnx")

ONNX_FILE = Path("onnx") / "model.onnx"
QUANTIZE = ("none", "int8")
OPSET = 17


def require(what: str = "the ONNX backend") -> None:
    """One line when onnxruntime or onnx is missing."""
    import importlib.util

    for name in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            raise UserError(f"{what} needs {name} (pip install 'peft-tags[serve]')")


def export_onnx(model, tokenizer, path: Path, quantize: str = "none") -> dict:
    """Write ``model`` (a transformers token classifier, no peft) to ``path`` as ONNX with
    dynamic batch and length; with ``quantize='int8'`` its weights dynamically quantised.
    Returns what was done, for export.json."""
    import torch

    require("--format onnx")
    if quantize not in QUANTIZE:
        raise UserError(f"--quantize: expected {' or '.join(QUANTIZE)}, got '{quantize}'")
    model = model.eval().to("cpu", torch.float32)
    eager = _eager_attention(model)
    sample = tokenizer(["ab", "abc def"], padding=True, return_tensors="pt")
    inputs = (sample["input_ids"], sample["attention_mask"])
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "logits": {0: "batch", 1: "tokens"}}
    if path.exists():
        raise UserError(f"{path}: already exists; the ONNX export writes a new file")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the float graph is written, fused and quantised in a folder of its own beside ``path``
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as work:
        fp32 = Path(work) / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            # the TorchScript exporter: the dynamo one needs onnxscript and gives the same graph here
            torch.onnx.export(model, inputs, str(fp32), input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        done = {"format": "onnx", "opset": OPSET, "quantize": quantize,
                "fused": _fuse(fp32, model.config) if eager else {}}
        if quantize == "none":
            os.replace(fp32, path)
            return done
        head = _quantize_int8(fp32, path)
    done["quantization"] = ("onnxruntime dynamic: int8 weights (7-bit range) per output channel, uint8 "
                            "activations per batch; MatMul and Attention only, not the head "
                            f"({', '.join(head) or 'none found'}) nor the embeddings")
    return done


def _quantize_int8(fp32: Path, path: Path) -> list[str]:
    """Dynamic int8 of the encoder's matrix products of ``fp32`` into ``path``; returns the head's
    nodes, left in float so that the scores Viterbi and tuned thresholds decide on keep their
    precision (the embeddings, a Gather, stay float too).

    reduce_range (7-bit weights): without it the uint8 x int8 kernels of CPUs without VNNI (AVX2)
    saturate; on a tiny test model the largest probability error was 0.13 without, 0.005 with it.
    The exported file may run on either kind of CPU, so it is always on. DefaultTensorType: shape
    inference does not type the outputs of fused (com.microsoft) operators."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    head = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node if "classifier" in n.name]
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its advice to pre-process, printed at every call
    try:
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=head,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.level = level
    return head


#: model types whose graphs onnxruntime's transformer optimizer fuses (attention, embeddings, layer norms)
FUSABLE = ("bert", "roberta", "xlm-roberta", "distilbert", "electra")


def _eager_attention(model) -> bool:
    """Export the attention as plain matrix products (not torch's fused SDPA kernel) where
    onnxruntime's optimizer can fuse that pattern into its own Attention operator: on me5-small
    that is one fused op per layer instead of a dozen small ones."""
    if getattr(model.config, "model_type", None) not in FUSABLE:
        return False
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        return False
    return True


def _fuse(path: Path, config) -> dict:
    """Fuse the graph at ``path`` in place with onnxruntime's transformer optimizer; returns the
    fused operators (none when the optimizer does not apply, and the graph is left as it was)."""
    from onnxruntime.transformers.optimizer import optimize_model

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        opt = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                             hidden_size=config.hidden_size)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        if fused.get("Attention"):
            opt.save_model_to_file(str(path))
            return fused
    except Exception as e:  # an optimizer that does not know the graph leaves it unfused, which still runs
        log.warning("onnxruntime's optimizer could not fuse the graph (%s); exported unfused", type(e).__name__)
    finally:
        root.level = level
    return {}


def split_threads(threads: int | None = None) -> int:
    """For a process that runs an ONNX model: onnxruntime gets ``threads`` (default: torch's
    count), torch keeps one for the small steps around it (softmax, pooling). Both pools spin
    while they wait for work, and on two cores the two of them at full size took turns: on
    jd-ner with int8 one title took 26 ms with both at two threads and 19 ms split this way."""
    import torch

    n = threads or torch.get_num_threads()
    torch.set_num_threads(1)
    return n


class OnnxModel:
    """An ONNX token classifier in onnxruntime, called like a transformers model."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        import torch

        require()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a damaged file
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: not a loadable ONNX model ({text[:200]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        if not {"input_ids", "attention_mask"} <= set(self.inputs):
            raise UserError(f"{path}: expected inputs input_ids and attention_mask, the model has {self.inputs}")

    def eval(self) -> "OnnxModel":
        return self

    def __call__(self, input_ids, attention_mask) -> SimpleNamespace:
        import torch

        ids = input_ids.cpu().numpy().astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))
