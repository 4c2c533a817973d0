#!/usr/bin/env bash
# The GPU session in one prepared script: on a bare GPU host whose python3 has PyTorch with CUDA
# (the workplace's lent machine), put the worker's other packages in place from the wheels in .whl/
# (docs/benchmarks.md, "GPU readiness", says how to download them), check
# the product end to end on the GPU with the sample clip, then run bench_gpu.py. Everything it
# prints is also written to $OUT (default ./gpu-out): env.txt, smoke.txt, bench_gpu.md. Arguments
# go to bench_gpu.py (its sections run the end-to-end rows first). About BUDGET + 90 s in all.
#   OUT=/some/dir BUDGET=300 benchmarks/gpu_host.sh [--sections pipeline,model ...]
#   benchmarks/gpu_host.sh --help    # this text (bench_gpu.py --help lists its arguments)
set -u
case "${1-}" in
  -h|--help) sed -n '2,/^set -u/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
esac
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
BUDGET=${BUDGET:-300}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
prefix=/tmp/stylebatch-deps
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --prefix "$prefix" .whl/*.whl || exit 1
fi
site=$(python3 -c "import sysconfig; print(sysconfig.get_path('purelib', vars={'base': '$prefix', 'platbase': '$prefix'}))")
export PYTHONPATH=$PWD/worker:$PWD/benchmarks:$site PATH=$prefix/bin:$PATH LD_LIBRARY_PATH=$prefix/lib:${LD_LIBRARY_PATH:-}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "cores: $(nproc)"; grep -m1 "model name" /proc/cpuinfo
  python3 -c "import torch, av, mpi4py, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), '| av', av.__version__, '| mpi4py', mpi4py.__version__, '| numpy', numpy.__version__)"
  command -v mpiexec
} 2>&1 | tee "$OUT/env.txt"

# The product on the GPU: stylebatch run on the sample (720x528, 144 frames, with sound), then the
# output's frames and streams, so a broken GPU path shows here before any benchmark.
{
  start=$(date +%s.%N)
  timeout 150 python3 -m stylebatch run samples/sample.mp4 -o /tmp/smoke.mp4 --device cuda
  echo "exit $? in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
  python3 -c "
import av
with av.open('/tmp/smoke.mp4') as c:
    v = c.streams.video[0]
    n = sum(1 for _ in c.decode(video=0))
    print('output:', v.codec_context.name, v.width, 'x', v.height, n, 'frames;', [s.type for s in c.streams])"
} 2>&1 | tail -12 | tee "$OUT/smoke.txt"

timeout $((BUDGET + 90)) python3 benchmarks/bench_gpu.py --budget "$BUDGET" "$@" 2>&1 | tee "$OUT/bench_gpu.md"
