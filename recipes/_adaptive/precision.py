"""Mixed precision as Accelerate runs it: fp16 on a CPU is no autocast at all (a float32 run),
refused where a run would record it as fp16."""
from __future__ import annotations


def _refuse_inert_precision(accelerator, from_launch: bool) -> None:
    """Accelerate turns fp16 off on a CPU without a word (no autocast, no scaler: a float32 run),
    while the run would record and announce fp16: refused, before anything is written."""
    if _inert_fp16(accelerator):
        given = ("mixed precision fp16 (from accelerate launch or its config)" if from_launch else
                 "--mixed_precision fp16")
        raise ValueError(f"{given} cannot run on the {accelerator.device.type.upper()} (Accelerate runs fp16 "
                         "autocast only on an accelerator such as a GPU, and would silently run float32 here): use "
                         "--mixed_precision bf16 (the CPU's mixed precision) or --mixed_precision no")


def _inert_fp16(accelerator) -> bool:
    """fp16 set but no fp16 autocast (Accelerate's native_amp off: a CPU); DeepSpeed and
    Megatron-LM run their own precision, not Accelerate's autocast."""
    return accelerator.mixed_precision == "fp16" and not accelerator.native_amp and _no_fp16_autocast(accelerator)


def _no_fp16_autocast(accelerator) -> bool:
    """Whether Accelerate would run fp16 here as float32 (no autocast, no scaler): on a CPU, outside
    DeepSpeed and Megatron-LM (which run their own precision)."""
    from accelerate.utils import DistributedType

    return (accelerator.device.type == "cpu"
            and accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM))
