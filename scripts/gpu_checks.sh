#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine whose python3 already holds torch (CUDA build):
#   pytest -m gpu, then benchmarks/policy_latency.py --full --device cuda (pytorch, onnxruntime and tensorrt rows at
#   batch 1 and 8, then torch-compile at batch 1). Logs go to $OUT (default ./out/gpu).
# Wheels the machine lacks (transformers<5, tokenizers, huggingface_hub<1, pyzmq) may be placed in .whl/ beforehand;
# they are installed into /tmp/site and put first on PYTHONPATH. The packages run from packages/*/src.
set -o pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/packages/gr00t-client/src:$PWD/packages/gr00t-server/src:$PWD/packages/gr00t-eval/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 - <<'PY' 2>&1 | tee "$OUT/env.log"
import torch, transformers, zmq, cv2, importlib.util
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU")
print("transformers", transformers.__version__, "pyzmq", zmq.__version__, "cv2", cv2.__version__)
for name in ("onnx", "onnxruntime", "tensorrt"):
    print(name, "present" if importlib.util.find_spec(name) else "absent")
if importlib.util.find_spec("onnxruntime"):
    import onnxruntime
    print("onnxruntime providers", onnxruntime.get_available_providers())
PY
timeout "${GPU_TESTS_TIMEOUT:-200}" python3 -m pytest -m gpu tests/server/test_backends_gpu.py tests/server/test_cuda_policy.py \
    -q -rA -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
timeout "${LATENCY_TIMEOUT:-120}" python3 benchmarks/policy_latency.py --full --device cuda \
    --backends pytorch onnxruntime tensorrt --batch-sizes 1 8 2>&1 | tee "$OUT/latency_eager.log"
timeout "${COMPILE_TIMEOUT:-220}" python3 benchmarks/policy_latency.py --full --device cuda \
    --backends torch-compile --batch-sizes 1 2>&1 | tee "$OUT/latency_compile.log"
