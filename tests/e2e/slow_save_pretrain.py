"""pretrain_gpt.py whose second checkpoint save stalls for a minute after the engine has written
its files into <tag>.tmp (before the rename): the window a real `kill -9` during a save hits.
Used by test_kill_9_during_save_leaves_the_previous_checkpoint_loadable."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import pretrain_gpt  # noqa: E402
from megatron.trainer import checkpoint  # noqa: E402

_write_config = checkpoint.write_config_json
_saves = []


def stalling_write_config(cfg, directory, tag):
    _saves.append(tag)
    if len(_saves) == 2:
        print(f"stalling in save of {tag}", flush=True)
        time.sleep(60)
    _write_config(cfg, directory, tag)


checkpoint.write_config_json = stalling_write_config

if __name__ == "__main__":
    pretrain_gpt.main(sys.argv[1:])
