"""Run by tests/test_distributed.py under `accelerate launch` (2 CPU processes over gloo): a short
SDFT run with the EMA teacher, then every process's LoRA weights and teacher state are gathered
and compared; process 0 writes what it found to the JSON file named on the command line."""

import json
import sys

import torch
from accelerate.utils import gather

from sdft_kit import Config, Trainer
from sdft_kit.data import load_examples
from sdft_kit.models import lora_parameters


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def main(data: str, out: str) -> None:
    config = Config().replace(method="sdft", teacher="ema", ema_rate=0.5, steps=2, batch_size=1,
                              max_new_tokens=8, threads=1, seed=3)
    trainer = Trainer(config, load_examples(data))
    records = trainer.train(progress=False)
    weights = flat(lora_parameters(trainer.model).values())
    teacher = flat(v for v in trainer.teacher.state_dict().values() if torch.is_tensor(v))
    all_weights, all_teachers = gather(weights[None]), gather(teacher[None])  # (processes, n) on every process
    if trainer.processes.main:
        moved = bool(records[-1]["grad_norm"] > 0)
        with open(out, "w") as f:
            json.dump({"processes": trainer.processes.world, "records": records, "moved": moved,
                       "same_weights": torch.equal(all_weights[0], all_weights[1]),
                       "same_teacher": torch.equal(all_teachers[0], all_teachers[1]),
                       "teacher_size": teacher.numel()}, f, default=str)
    trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
