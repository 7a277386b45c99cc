#!/usr/bin/python3
"""Model writer of `multihead bench`'s ONNX Runtime peer (bench/ort_peer.cpp): one
com.microsoft.GroupQueryAttention node, the decode step of D1-fp32, as an ONNX file.

Usage: ort_peer_model.py SPEC_JSON
  SPEC_JSON = {"H": query heads, "Hkv": K/V heads, "D": head size,
               "M": cache length (static: past and present share one buffer),
               "path": where to write the model}
Prints {"ok": true} or {"ok": false, "error": "..."} on stdout.

The node (ONNX Runtime's contract, docs/ContribOperators.md):
  query (1, 1, H*D), key / value (1, 1, Hkv*D): the new token, heads flattened (BSH)
  past_key / past_value (1, Hkv, M, D): the cache in BNSH; when the caller binds
      present_key / present_value to the same buffers, ORT writes the new token's K/V
      at position seqlens_k in place (no copy of the past)
  seqlens_k (1,) int32: total sequence length - 1 (the position of the new token)
  total_sequence_length () int32: past + new
  scale: left out, 1/sqrt(D); no causal mask matters for a single query.
"""
import json
import sys


def main():
    spec = json.loads(sys.argv[1])
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as e:
        print(json.dumps({"ok": False, "error": "python3-onnx missing: %s" % e}))
        return
    H, Hkv, D, M = spec["H"], spec["Hkv"], spec["D"], spec["M"]
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    inputs = [
        helper.make_tensor_value_info("query", f32, [1, 1, H * D]),
        helper.make_tensor_value_info("key", f32, [1, 1, Hkv * D]),
        helper.make_tensor_value_info("value", f32, [1, 1, Hkv * D]),
        helper.make_tensor_value_info("past_key", f32, [1, Hkv, M, D]),
        helper.make_tensor_value_info("past_value", f32, [1, Hkv, M, D]),
        helper.make_tensor_value_info("seqlens_k", i32, [1]),
        helper.make_tensor_value_info("total_sequence_length", i32, []),
    ]
    outputs = [
        helper.make_tensor_value_info("output", f32, [1, 1, H * D]),
        helper.make_tensor_value_info("present_key", f32, [1, Hkv, M, D]),
        helper.make_tensor_value_info("present_value", f32, [1, Hkv, M, D]),
    ]
    node = helper.make_node("GroupQueryAttention", [i.name for i in inputs], [o.name for o in outputs],
                            name="gqa", domain="com.microsoft", num_heads=H, kv_num_heads=Hkv)
    graph = helper.make_graph([node], "multihead_decode", inputs, outputs)
    model = helper.make_model(graph, producer_name="multihead bench",
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    # The standard checker knows nothing of com.microsoft ops; check the graph's structure.
    onnx.checker.check_model(model)
    onnx.save(model, spec["path"])
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the caller reports the reason
        print(json.dumps({"ok": False, "error": "%s: %s" % (type(e).__name__, e)}))
