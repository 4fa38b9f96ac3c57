#!/usr/bin/env bash
# The GPU pass (CI never runs this; it has no GPU): on a machine with a CUDA GPU and torch, from the
# repository root, after .ci/gpu_prepare.sh made .gpudata/ here. Writes its logs under $OUT (default
# gpu_check/): the GPU cases of tests/test_accelerator.py, the three recipes on the GPU (fp16, bf16,
# mask-only ResNet-20 on a CIFAR subset), then the whole suite. Takes about 5 minutes on 16 cores.
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
# the copied data stands in for ../shared/data only where there is none: a real folder, or a link to real data, is
# used as it is; a link an earlier pass made (into a .gpudata/ folder) or one pointing nowhere is made again
link=$(readlink ../shared/data 2>/dev/null)
if [ ! -e ../shared/data ] || [ "${link#*/.gpudata/}" != "$link" ]; then
  mkdir -p ../shared && rm -f ../shared/data && ln -s "$PWD/.gpudata/shared/data" ../shared/data
fi
{ nvidia-smi -L; python3 -c "import torch, torchvision, accelerate; print(torch.__version__, torchvision.__version__, accelerate.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/env.txt"
echo "== tests/test_accelerator.py"
timeout 180 python3 -m pytest -q -p no:cacheprovider -rs tests/test_accelerator.py tests/test_syncs.py 2>&1 | tail -40 | tee "$OUT/accel.log"
echo "== recipes on the GPU"
( set -x
  timeout 90 accelerate launch --num_processes 1 recipes/adaptive.py --output_dir /tmp/r_digits --no-progress --mixed_precision fp16 2>&1 | tail -4
  timeout 120 accelerate launch --num_processes 1 recipes/adaptive.py --model lenet300 --dataset mnist --density 0.1 --epochs 3 --policy threshold --update_every 5 --mixed_precision bf16 --output_dir /tmp/r_mnist --no-progress 2>&1 | tail -4
  timeout 150 python3 recipes/prune_pretrained.py --model resnet20 --weights .gpudata/shared/data/resnet-cifar10/resnet20-12fca82f.th --dataset cifar10 --data-dir .gpudata/cifar --remove 0.2 0.5 --passes 1 --num-workers 4 --output_dir /tmp/r_prune --no-progress 2>&1 | tail -12
  python3 -c "import torch; [print(p, {v.device.type for v in torch.load(p, weights_only=True).values()}) for p in ['/tmp/r_digits/dense_state_dict.pt', '/tmp/r_prune/remove_0.5/pruned_state_dict.pt']]"
) > "$OUT/recipes.log" 2>&1; tail -40 "$OUT/recipes.log"
echo "== whole suite"
timeout 420 python3 -m pytest -q -p no:cacheprovider -n "$(( $(nproc) > 14 ? 14 : $(nproc) ))" --maxfail 80 tests > "$OUT/suite.log" 2>&1; echo "suite rc $?"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/suite.log" | tail -70
