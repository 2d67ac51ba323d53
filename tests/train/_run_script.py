"""Run one training phase from a JSON config in a fresh process (used by the resume and DDP tests).

``KILL_AT=N`` in the environment kills the process (``os._exit``, no clean-up) right after step N.
"""

import json
import os
import sys

import torch

torch.set_num_threads(1)

from transformers import TrainerCallback  # noqa: E402

from evl_ecg.train.config import load_config  # noqa: E402
from evl_ecg.train.pipeline import run  # noqa: E402


class _Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["KILL_AT"]):
            os._exit(3)


if __name__ == "__main__":
    cfg = load_config(None, **json.loads(sys.argv[1]))
    run(cfg, callbacks=[_Kill()] if "KILL_AT" in os.environ else None)
