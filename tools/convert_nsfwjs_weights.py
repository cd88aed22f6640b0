"""Convert the InceptionV3 in the ``nsfwjs`` npm package into docsort's Mixed_5c weights.

Provenance
----------
``nsfwjs`` (https://github.com/infinitered/nsfwjs, MIT licence, (c) 2019 Infinite Red,
Inc.) version 4.4.0 ships, under ``package/dist/models/inception_v3/``, a TensorFlow.js
*layers* model wrapped in browserify bundles:

* ``model.min.js`` -- the ``model.json`` object (Keras 2.2.4 topology + weights
  manifest) written as a JavaScript object literal;
* ``group1-shard{1..6}of6.min.js`` -- the six binary weight shards, each a base64
  string.

The network is a Keras ``InceptionV3`` initialised from ImageNet and fine-tuned as a
5-class image classifier. Its weights are 8-bit quantised: every tensor in the manifest
carries ``quantization: {dtype: "uint8", min, scale}`` and is stored as one byte per
value, de-quantised as ``value = q * scale + min`` (the TF.js affine uint8 scheme). nsfwjs
feeds it ``pixels / 255`` (inputs in [0, 1]), not the usual InceptionV3 ``[-1, 1]``.

Its 94 Conv2D and 94 BatchNormalization layers correspond one to one, in creation order,
to those of ``keras.applications.InceptionV3``. This script copies them all onto
``InceptionV3(include_top=False, weights=None, input_shape=(299, 299, 3))`` (checking
counts and every shape), truncates the model at ``mixed1`` (TF-slim ``Mixed_5c``,
output ``(batch, 35, 35, 288)``) and writes only that truncated model's weights with
``model.save_weights`` (a Keras 3 ``.weights.h5`` file).

Usage
-----
Fetch the package tarball with npm (no install needed)::

    npm pack nsfwjs@4.4.0            # writes nsfwjs-4.4.0.tgz
    python tools/convert_nsfwjs_weights.py nsfwjs-4.4.0.tgz \\
        [--out docsort/weights/inception_v3_mixed1_nsfwjs.weights.h5]

The script prints the sha256 of the file it wrote. It is a development tool and is not
used at run time.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import sys
import tarfile
from pathlib import Path

import numpy as np

MODEL_DIR = "package/dist/models/inception_v3/"
MODEL_FILE = MODEL_DIR + "model.min.js"
DEFAULT_OUT = "docsort/weights/inception_v3_mixed1_nsfwjs.weights.h5"
CUT_LAYER = "mixed1"
EXPECTED_CONV = 94
EXPECTED_BN = 94

# The browserify prelude ends with ``({1:[function(a,n,i){n.exports=``; the payload follows.
_EXPORTS_RE = re.compile(r"\{1:\[function\(\w+,(\w+),\w+\)\{\1\.exports=")


# --------------------------------------------------------------------------- JS parsing
class _JSLiteralParser:
    """Minimal parser for the JavaScript object literal that minifiers emit for JSON.

    Handles objects with bare or quoted keys, arrays, strings, numbers such as ``.5`` or
    ``1e-3``, ``null``, ``true``/``false`` and their minified forms ``!0``/``!1``.
    """

    _NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
    _IDENT = re.compile(r"[A-Za-z_$][\w$]*")

    def __init__(self, text: str, pos: int = 0) -> None:
        self.s = text
        self.i = pos

    def _ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def _error(self, what: str) -> ValueError:
        return ValueError(f"{what} at offset {self.i}: {self.s[self.i:self.i + 40]!r}")

    def value(self):
        self._ws()
        c = self.s[self.i]
        if c == "{":
            return self._object()
        if c == "[":
            return self._array()
        if c in "\"'":
            return self._string()
        if c == "!":
            self.i += 1
            operand = self.value()
            if not isinstance(operand, (int, float, bool)):
                raise self._error("unsupported '!' operand")
            return not operand
        m = self._NUMBER.match(self.s, self.i)
        if m:
            self.i = m.end()
            text = m.group()
            return float(text) if any(ch in text for ch in ".eE") else int(text)
        m = self._IDENT.match(self.s, self.i)
        if m and m.group() in ("null", "true", "false"):
            self.i = m.end()
            return {"null": None, "true": True, "false": False}[m.group()]
        raise self._error("unexpected token")

    def _object(self) -> dict:
        self.i += 1
        out: dict = {}
        self._ws()
        if self.s[self.i] == "}":
            self.i += 1
            return out
        while True:
            self._ws()
            if self.s[self.i] in "\"'":
                key = self._string()
            else:
                m = self._IDENT.match(self.s, self.i) or self._NUMBER.match(self.s, self.i)
                if not m:
                    raise self._error("bad object key")
                key = m.group()
                self.i = m.end()
            self._ws()
            if self.s[self.i] != ":":
                raise self._error("expected ':'")
            self.i += 1
            out[key] = self.value()
            self._ws()
            c = self.s[self.i]
            self.i += 1
            if c == "}":
                return out
            if c != ",":
                raise self._error("expected ',' or '}'")

    def _array(self) -> list:
        self.i += 1
        out: list = []
        self._ws()
        if self.s[self.i] == "]":
            self.i += 1
            return out
        while True:
            out.append(self.value())
            self._ws()
            c = self.s[self.i]
            self.i += 1
            if c == "]":
                return out
            if c != ",":
                raise self._error("expected ',' or ']'")

    _ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}

    def _string(self) -> str:
        quote = self.s[self.i]
        self.i += 1
        parts: list[str] = []
        while True:
            c = self.s[self.i]
            if c == quote:
                self.i += 1
                return "".join(parts)
            if c == "\\":
                e = self.s[self.i + 1]
                if e == "u":
                    parts.append(chr(int(self.s[self.i + 2:self.i + 6], 16)))
                    self.i += 6
                    continue
                if e == "x":
                    parts.append(chr(int(self.s[self.i + 2:self.i + 4], 16)))
                    self.i += 4
                    continue
                parts.append(self._ESCAPES.get(e, e))
                self.i += 2
                continue
            parts.append(c)
            self.i += 1


def _exports_payload(js: str, name: str):
    """Return the value assigned to ``module.exports`` in a browserify bundle."""
    m = _EXPORTS_RE.search(js)
    if not m:
        raise ValueError(f"{name}: no browserify 'exports=' payload found")
    return _JSLiteralParser(js, m.end()).value()


# ------------------------------------------------------------------------ TF.js reading
def read_tfjs_model(tgz: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Return (model.json dict, {weight name: float32 array}) from the nsfwjs tarball."""
    with tarfile.open(tgz, "r:gz") as tar:
        def read(member: str) -> str:
            f = tar.extractfile(member)
            if f is None:
                raise FileNotFoundError(member)
            return f.read().decode("utf-8")

        model_json = _exports_payload(read(MODEL_FILE), MODEL_FILE)
        buffers = []
        for group in model_json["weightsManifest"]:
            for path in group["paths"]:
                member = MODEL_DIR + path + ".min.js"
                payload = _exports_payload(read(member), member)
                buffers.append(base64.b64decode(payload, validate=True))
    data = b"".join(buffers)

    weights: dict[str, np.ndarray] = {}
    offset = 0
    specs = [spec for group in model_json["weightsManifest"] for spec in group["weights"]]
    for spec in specs:
        shape = tuple(spec["shape"])
        n = int(np.prod(shape, dtype=np.int64))
        q = spec.get("quantization")
        if q is None:
            if spec["dtype"] != "float32":
                raise ValueError(f"{spec['name']}: unsupported dtype {spec['dtype']}")
            arr = np.frombuffer(data, "<f4", n, offset)
            offset += 4 * n
        elif q["dtype"] == "uint8" and "scale" in q and "min" in q:
            raw = np.frombuffer(data, np.uint8, n, offset).astype(np.float64)
            # TF.js affine de-quantisation, computed in float64 then rounded once.
            arr = (raw * float(q["scale"]) + float(q["min"])).astype(np.float32)
            offset += n
        else:
            raise ValueError(f"{spec['name']}: unsupported quantization {q}")
        if spec["name"] in weights:
            raise ValueError(f"duplicate weight {spec['name']}")
        weights[spec["name"]] = arr.reshape(shape)
    if offset != len(data):
        raise ValueError(f"weight data is {len(data)} bytes but manifest uses {offset}")
    return model_json, weights


_ORDER = {
    "Conv2D": ["kernel", "bias"],
    "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
}
_SUFFIX_RE = re.compile(r"^(.*?)(?:_(\d+))?$")


def _creation_index(name: str) -> int:
    """Keras auto-names layers ``conv2d``, ``conv2d_1``, ... in creation order."""
    m = _SUFFIX_RE.match(name)
    return int(m.group(2)) if m and m.group(2) else 0


def _sorted_by_creation(names: list[str]) -> list[str]:
    ordered = sorted(names, key=_creation_index)
    idx = [_creation_index(n) for n in ordered]
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise AssertionError(f"layer names are not a consecutive auto-named run: {ordered}")
    return ordered


def tfjs_layer_weights(model_json: dict, weights: dict[str, np.ndarray], class_name: str):
    """[(layer name, [arrays in Keras order])] for every ``class_name`` layer, in creation order."""
    configs = {
        layer["config"]["name"]: layer["config"]
        for layer in model_json["modelTopology"]["model_config"]["config"]["layers"]
        if layer["class_name"] == class_name
    }
    out = []
    for name in _sorted_by_creation(list(configs)):
        cfg = configs[name]
        arrays = []
        for attr in _ORDER[class_name]:
            if attr == "bias" and not cfg.get("use_bias", True):
                continue
            if attr == "gamma" and not cfg.get("scale", True):
                continue
            if attr == "beta" and not cfg.get("center", True):
                continue
            arrays.append(weights[f"{name}/{attr}"])
        out.append((name, arrays))
    return out


def _upstream_convs(parents: dict[str, list[str]], is_conv: dict[str, bool], name: str) -> set[str]:
    """Nearest Conv2D layers feeding ``name`` (through BN, activations, pools, concats)."""
    found: set[str] = set()
    stack = list(parents.get(name, []))
    seen: set[str] = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        if is_conv.get(p):
            found.add(p)
        else:
            stack.extend(parents.get(p, []))
    return found


def _source_graph(model_json: dict) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({layer: [inbound layer names]}, {layer: class name}) from the TF.js topology."""
    parents, kinds = {}, {}
    for layer in model_json["modelTopology"]["model_config"]["config"]["layers"]:
        name = layer["config"]["name"]
        kinds[name] = layer["class_name"]
        parents[name] = [inb[0] for node in layer["inbound_nodes"] for inb in node]
    return parents, kinds


def _keras_graph(model) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({layer: [inbound layer names]}, {layer: class name}) from a Keras functional model."""
    parents, kinds = {}, {}
    for layer in model.layers:
        kinds[layer.name] = type(layer).__name__
        if kinds[layer.name] == "InputLayer":
            parents[layer.name] = []
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        parents[layer.name] = [t._keras_history.operation.name for t in inputs]
    return parents, kinds


def check_wiring(src_graph, dst_graph, conv_map: dict[str, str], bn_map: dict[str, str]) -> None:
    """Assert the creation-order mapping respects the wiring of both graphs.

    Every BatchNormalization must be fed directly by the Conv2D it is mapped alongside,
    and every Conv2D must be fed (through BN / activation / pooling / concatenation) by
    the mapped counterparts of the same upstream Conv2D layers.
    """
    (src_parents, src_kinds), (dst_parents, dst_kinds) = src_graph, dst_graph
    src_is_conv = {n: k == "Conv2D" for n, k in src_kinds.items()}
    dst_is_conv = {n: k == "Conv2D" for n, k in dst_kinds.items()}
    conv_by_index = list(conv_map.items())
    for (src_bn, dst_bn), (src_conv, dst_conv) in zip(bn_map.items(), conv_by_index):
        if src_parents[src_bn] != [src_conv] or dst_parents[dst_bn] != [dst_conv]:
            raise AssertionError(
                f"{src_bn}/{dst_bn} are fed by {src_parents[src_bn]}/{dst_parents[dst_bn]}, "
                f"expected {src_conv}/{dst_conv}"
            )
    for src_name, dst_name in conv_map.items():
        want = {conv_map[n] for n in _upstream_convs(src_parents, src_is_conv, src_name)}
        got = _upstream_convs(dst_parents, dst_is_conv, dst_name)
        if want != got:
            raise AssertionError(f"wiring differs at {src_name} -> {dst_name}: {want} != {got}")


# -------------------------------------------------------------------------- conversion
def convert(tgz: Path, out: Path) -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    model_json, weights = read_tfjs_model(tgz)
    src_conv = tfjs_layer_weights(model_json, weights, "Conv2D")
    src_bn = tfjs_layer_weights(model_json, weights, "BatchNormalization")

    base = keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(299, 299, 3)
    )
    by_name = {l.name: l for l in base.layers}
    dst_conv = [
        by_name[n]
        for n in _sorted_by_creation(
            [l.name for l in base.layers if isinstance(l, keras.layers.Conv2D)]
        )
    ]
    dst_bn = [
        by_name[n]
        for n in _sorted_by_creation(
            [l.name for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
        )
    ]
    for kind, src, dst, expected in (
        ("Conv2D", src_conv, dst_conv, EXPECTED_CONV),
        ("BatchNormalization", src_bn, dst_bn, EXPECTED_BN),
    ):
        if not (len(src) == len(dst) == expected):
            raise AssertionError(
                f"{kind}: nsfwjs has {len(src)}, keras has {len(dst)}, expected {expected}"
            )
        for (src_name, arrays), layer in zip(src, dst):
            targets = layer.get_weights()
            shapes_src = [a.shape for a in arrays]
            shapes_dst = [t.shape for t in targets]
            if shapes_src != shapes_dst:
                raise AssertionError(
                    f"{kind} {src_name} -> {layer.name}: shapes {shapes_src} != {shapes_dst}"
                )
            layer.set_weights(arrays)
    check_wiring(
        _source_graph(model_json),
        _keras_graph(base),
        {src: dst.name for (src, _), dst in zip(src_conv, dst_conv)},
        {src: dst.name for (src, _), dst in zip(src_bn, dst_bn)},
    )

    model = keras.Model(base.input, base.get_layer(CUT_LAYER).output, name="inception_v3_mixed1")
    if tuple(model.output.shape) != (None, 35, 35, 288):
        raise AssertionError(f"unexpected {CUT_LAYER} output shape {model.output.shape}")
    used_conv = sum(isinstance(l, keras.layers.Conv2D) for l in model.layers)
    used_bn = sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    model.save_weights(str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(
        f"mapped {len(src_conv)} Conv2D + {len(src_bn)} BatchNormalization layers; "
        f"kept {used_conv} + {used_bn} up to '{CUT_LAYER}'"
    )
    print(f"parameters: {model.count_params():,}  output: {tuple(model.output.shape)}")
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    print(f"sha256 {digest}")
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert nsfwjs@4.4.0's InceptionV3 into Keras 3 weights truncated at mixed1."
    )
    parser.add_argument("tarball", type=Path, help="nsfwjs-4.4.0.tgz from `npm pack nsfwjs@4.4.0`")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"default: {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    convert(args.tarball, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
