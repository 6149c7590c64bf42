#!/usr/bin/env python3
"""Puts relkd's per-channel PReLU lowering, Max(x, Mul(x, a)), back into the single PRelu node
that `export` wrote before, so that the two forms of the same file are timed side by side
(README, "Per-channel PReLU"). Needs the `onnx` package.

    python3 ci/onnx_prelu_node.py paper/espnet.onnx paper/espnet-prelu-node.onnx
"""
import sys

import onnx

source, target = sys.argv[1], sys.argv[2]
model = onnx.load(source)
graph = model.graph
producer = {output: node for node in graph.node for output in node.output}
nodes, folded = [], set()
for node in graph.node:
    mul = producer.get(node.input[1]) if node.op_type == "Max" and len(node.input) == 2 else None
    if mul is not None and mul.op_type == "Mul" and mul.input[0] == node.input[0]:
        folded.add(id(mul))
        nodes.append(onnx.helper.make_node("PRelu", [node.input[0], mul.input[1]], list(node.output)))
    else:
        nodes.append(node)
nodes = [n for n in nodes if id(n) not in folded]
del graph.node[:]
graph.node.extend(nodes)
for entry in model.metadata_props:
    if entry.key == "relkd.model":
        entry.value += " (PRelu node)"  # named apart in `infer bench`'s table
onnx.checker.check_model(model)
onnx.save(model, target)
print(f"{target}: {sum(n.op_type == 'PRelu' for n in nodes)} PRelu nodes")
