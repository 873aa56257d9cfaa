"""Run under torchrun by tests/test_distributed.py: the tiny model's sharded forward over the
ranks (gloo), rank 0 saving the outputs. Usage: ``torchrun ... distributed_forward_script.py OUT NUM_FRAMES``."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from vggt_core.distributed import init_from_environment, sharded_forward
from vggt_core.weights import load_model

TINY = Path(__file__).parent / "fixtures" / "vggt-tiny"


def sequence(num_frames: int) -> torch.Tensor:
    """The golden inputs' 3 frames, then mirrored copies of them: ``[1, num_frames, 3, H, W]``."""
    images = load_file(str(TINY / "inputs.safetensors"))["images"]
    frames = [images[:, index % 3] if (index // 3) % 2 == 0 else images[:, index % 3].flip(-1)
              for index in range(num_frames)]
    return torch.stack(frames, dim=1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_path, num_frames = sys.argv[1], int(sys.argv[2])
    device = init_from_environment("cpu")
    model = load_model(TINY, device=device)
    outputs = sharded_forward(model, sequence(num_frames))
    if dist.get_rank() == 0:
        save_file({key: value.contiguous() for key, value in outputs.items() if isinstance(value, torch.Tensor)},
                  out_path)
    dist.destroy_process_group()
